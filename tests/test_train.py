"""train.py end to end on tiny images written here: outputs, learning, resume, --freeze, errors, DDP."""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

import train
import vit.loaders
from vit import augment
from vit.cache import load_split
from vit.checkpoint import load_checkpoint, model_checkpoint, model_from_checkpoint
from vit.device import mixed_precision
from vit.distributed import log, own_share
from vit.errors import UserError
from vit.files import save_atomically
from vit.loaders import make_loaders
from vit.model import VisionTransformer
from vit.settings import FORMAT
from vit.transforms import eval_transform
from vit.weights import build_model, interpolate_pos_embed

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 24, 12  # readable images per split (two classes, half each)
TINY = ["--image-size", "16", "--patch-size", "4", "--num-layers", "2", "--batch-size", "8",
        "--warmup-epochs", "1", "--device", "cpu", "--workers", "0"]
KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}


def write_split(folder, n, seed):
    """n noisy images per class: 'bright' (light pixels) and 'dark' (dark pixels), a learnable difference."""
    g = torch.Generator().manual_seed(seed)
    for name, low in (("bright", 150), ("dark", 0)):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            size = (20, 24) if i % 2 else (24, 20)
            pixels = torch.randint(low, low + 106, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """ROOT/{train,test}/{bright,dark}/*.png, plus a corrupt image and a text file in train/."""
    root = tmp_path_factory.mktemp("data")
    write_split(root / "train", N_TRAIN // 2, seed=0)
    write_split(root / "test", N_TEST // 2, seed=1)
    (root / "train" / "bright" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "train" / "dark" / "notes.txt").write_text("not an image")
    return root


def flags(dataset, out, *extra):
    """Command-line flags for a tiny CPU run writing under out/."""
    return ["--data", str(dataset), "--out-dir", str(out), "--cache-dir", str(out / "cache"), *TINY, *extra]


def run_script(*args, launcher=(sys.executable,)):
    """Run train.py as a user would; returns the CompletedProcess."""
    return subprocess.run([*launcher, str(REPO / "train.py"), *args], capture_output=True, text=True, timeout=300)


def last_line(stream):
    """The last line of captured output (progress bars end theirs with carriage returns)."""
    return re.split(r"[\r\n]", stream.strip())[-1]


def read_metrics(out, name):
    return json.loads((out / "results" / name / "metrics.json").read_text())


def accuracy_of(model, dataset, loss=False):
    """Accuracy of a model on the test images, with the checkpoint's own eval preprocessing (and with loss, the
    mean cross-entropy too)."""
    decoded = load_split(dataset / "test", ["bright", "dark"], model.preprocess)
    x = torch.stack([eval_transform(model.preprocess)(im) for im in decoded.images])
    with torch.no_grad():
        logits, labels = model.eval()(x), torch.tensor(decoded.labels)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return (accuracy, F.cross_entropy(logits, labels).item()) if loss else accuracy


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """A 4-epoch run from scratch (the uninterrupted reference for resuming)."""
    out = tmp_path_factory.mktemp("ref")
    result = run_script(*flags(dataset, out, "--epochs", "4", "--lr", "2e-3", "--name", "ref"))
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_writes_all_outputs_that_load_back(reference, dataset):
    out, _ = reference
    metrics = read_metrics(out, "ref")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4] and all(set(m) == KEYS for m in metrics)
    assert sorted(os.listdir(out / "results" / "ref")) == ["confusion_matrix.png", "curves.png", "metrics.json"]
    for png in ("curves.png", "confusion_matrix.png"):
        with Image.open(out / "results" / "ref" / png) as image:
            assert image.format == "PNG" and min(image.size) > 100
    last, best = load_checkpoint(out / "models" / "ref.pt"), load_checkpoint(out / "models" / "ref-best.pt")
    assert last["epoch"] == 4 and last["metrics"] == metrics and last["classes"] == ["bright", "dark"]
    assert best["best_acc"] == max(m["test_acc"] for m in metrics) == best["metrics"][-1]["test_acc"]
    # RUN-best.pt is the first epoch that reached the best accuracy, not a later one that only equalled it
    assert best["epoch"] == min(m["epoch"] for m in metrics if m["test_acc"] == best["best_acc"])
    assert last["settings"]["name"] == "ref" and last["format"] == FORMAT and "git_commit" in last
    model = model_from_checkpoint(last)  # a working model that scores what training measured
    assert model.classes == ["bright", "dark"] and model.image_size == 16
    accuracy, loss = accuracy_of(model, dataset, loss=True)
    assert (accuracy, loss) == (pytest.approx(metrics[-1]["test_acc"]), pytest.approx(metrics[-1]["test_loss"], 1e-5))
    # each epoch's lr is the one its first step used: 3 steps an epoch (24 images, batches of 8), a warm-up of one
    # epoch from a third of the peak 2e-3, then a cosine to 0 after 12 steps (at 3/9 and 6/9 of the way here)
    assert [m["lr"] for m in metrics] == pytest.approx([2e-3 / 3, 2e-3, 2e-3 * 0.75, 2e-3 * 0.25])


def test_loss_falls_and_accuracy_rises(reference, dataset):
    metrics = read_metrics(reference[0], "ref")
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"]
    untrained = VisionTransformer(**load_checkpoint(reference[0] / "models" / "ref.pt")["model"]["config"])
    assert accuracy_of(untrained, dataset) == 0.5  # zero-initialised head: one class for every image
    assert metrics[-1]["test_acc"] >= 0.9


def test_threads_change_speed_not_results(reference, dataset, tmp_path):
    threads = torch.get_num_threads()
    try:
        train.main(flags(dataset, tmp_path, "--epochs", "4", "--lr", "2e-3", "--name", "ref", "--threads", "1"))
    finally:
        torch.set_num_threads(threads)
    # the epochs, accuracies and learning rates exactly; the losses to far more digits than printed (a CPU's matrix
    # kernels may split a sum differently by thread count, which moves a loss in its seventh digit)
    exact, losses = KEYS - {"seconds", "train_loss", "test_loss"}, ("train_loss", "test_loss")
    for a, b in zip(read_metrics(tmp_path, "ref"), read_metrics(reference[0], "ref"), strict=True):
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        assert {k: a[k] for k in losses} == pytest.approx({k: b[k] for k in losses}, rel=1e-5)


def test_corrupt_image_skipped_and_named(reference):
    stdout = reference[1].stdout
    assert f"train: {N_TRAIN} images" in stdout and "skipped 1 non-image file" in stdout
    assert "skipped unreadable image" in stdout and "broken.png" in stdout


def test_train_epoch_reports_the_smoothed_loss_and_accuracy_over_samples(monkeypatch):
    """One epoch's loss is the label-smoothed cross-entropy it trains on, and loss and accuracy are means over the
    samples (not over batches: the last one is short), accuracy against the unmixed labels."""
    net = torch.nn.Linear(2, 3)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, -1]]))
        net.bias.zero_()
    x = torch.tensor([[2.0, 0], [0, 2], [1, 3], [0, 0.5], [3, 1]])
    y = torch.tensor([0, 1, 0, 2, 1])  # predicted: 0, 1, 1, 1, 0: two of five right
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # nothing moves: every batch sees these logits
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    _, scaler = mixed_precision(torch.device("cpu"))
    trainer = train.Trainer(net, net, optimizer, scheduler, scaler, None, torch.device("cpu"), contextlib.nullcontext,
                            label_smoothing=0.1, clip_grad=1.0)
    with torch.no_grad():
        expected = F.cross_entropy(net(x), y, label_smoothing=0.1).item()
    loss, accuracy = train.train_epoch(trainer, loader, desc="test")
    assert loss == pytest.approx(expected) and accuracy == pytest.approx(2 / 5)

    def mixed(images, labels):  # targets that agree with every prediction: against them, accuracy would be 1
        return images, F.one_hot(net(images).argmax(1), 3).float()

    _, accuracy = train.train_epoch(dataclasses.replace(trainer, mix=mixed), loader, desc="test")
    assert accuracy == pytest.approx(2 / 5)  # still counted against y
    other = torch.tensor([3.0, 2.0, 5.0])  # under torchrun: another process's summed loss, correct and samples
    monkeypatch.setattr(train, "all_reduce", lambda totals: totals + other)
    loss, accuracy = train.train_epoch(trainer, loader, desc="test")
    assert loss == pytest.approx((5 * expected + 3) / 10) and accuracy == pytest.approx(4 / 10)  # all samples


def soft_targets(images, labels):
    """A stand-in for Mixup/CutMix: each sample's target a distribution over 3 classes, other than its label."""
    return images, F.softmax(torch.cat([images, -images.sum(1, keepdim=True)], 1), 1)


@pytest.mark.parametrize("batch_size, mix", [(2, None), (3, None), (3, soft_targets)])
def test_train_epoch_counts_each_image_once_when_a_distributed_sampler_pads_the_shares(batch_size, mix, monkeypatch):
    """DistributedSampler pads 5 images to 6, so that 2 processes get 3 each: the repeat (at the end of rank 1's
    share, alone in its batch or after two of rank 1's own) is trained on, but the figures count 5 images once
    (with Mixup/CutMix, the loss against the counted images' mixed targets)."""
    net = torch.nn.Linear(2, 3)
    x, y = torch.tensor([[2.0, 0], [0, 2], [1, 3], [0, 0.5], [3, 1]]), torch.tensor([0, 1, 0, 2, 1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # nothing moves: every batch sees the same logits
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    _, scaler = mixed_precision(torch.device("cpu"))
    trainer = train.Trainer(net, net, optimizer, scheduler, scaler, mix, torch.device("cpu"), contextlib.nullcontext,
                            label_smoothing=0.1, clip_grad=1.0)
    totals = []  # each process's sums, which all_reduce adds up under torchrun
    monkeypatch.setattr(train, "all_reduce", lambda t: totals.append(t.clone()) or t)
    for rank in range(2):
        sampler = DistributedSampler(TensorDataset(x, y), 2, rank, seed=0)
        loader = DataLoader(TensorDataset(x, y), batch_size, sampler=sampler)
        assert sum(len(b) for b, _ in loader) == 3  # 5 images in shares of 3
        train.train_epoch(trainer, loader, desc="test", own=own_share(5, 2, rank))
    loss_sum, correct, count = sum(totals).tolist()
    with torch.no_grad():
        expected = F.cross_entropy(net(x), (mix or (lambda *xy: xy))(x, y)[1], label_smoothing=0.1,
                                   reduction="sum").item()
    assert count == 5 and correct == (net(x).argmax(1) == y).sum() and loss_sum == pytest.approx(expected)


def test_interrupted_and_resumed_equals_uninterrupted(reference, dataset, tmp_path, capsys):
    train.main(flags(dataset, tmp_path, "--epochs", "4", "--lr", "2e-3", "--name", "ref", "--stop-after", "2"))
    assert "--resume" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "models" / "ref.pt")["epoch"] == 2
    # --epochs and --data as saved, --lr not: the run keeps its own, names what it ignored, and the results show it
    second = run_script("--resume", str(tmp_path / "models" / "ref.pt"), "--device", "cpu", "--epochs", "4",
                        "--lr", "0.5", "--data", os.path.relpath(dataset))  # the same folder, relative
    assert second.returncode == 0, second.stderr
    assert "ignored with --resume: --lr (a resumed run keeps the settings it started with)" in second.stdout
    resumed, uninterrupted = read_metrics(tmp_path, "ref"), read_metrics(reference[0], "ref")
    assert len(resumed) == 4
    for a, b in zip(resumed, uninterrupted):  # to the last digit: the same computation in the same order
        assert {k: a[k] for k in KEYS - {"seconds"}} == {k: b[k] for k in KEYS - {"seconds"}}


def test_the_printed_resume_command_runs_as_typed_from_another_folder(dataset, tmp_path, capsys, monkeypatch):
    """The command printed at --stop-after (and Ctrl-C) is what a user types: its checkpoint path shell-quoted (an
    --out-dir with a space), and train.py named where it is when the run was started from another folder."""
    out = tmp_path / "my runs"
    monkeypatch.chdir(tmp_path)
    train.main(flags(dataset, out, "--epochs", "2", "--name", "run", "--stop-after", "1"))
    command = re.search(r"continue with: (.*)", capsys.readouterr().out).group(1)
    launcher, script, *argv = shlex.split(command)
    assert launcher == "python" and (tmp_path / script).resolve() == REPO / "train.py", command
    assert argv == ["--resume", str(out / "models" / "run.pt")], command
    train.main(argv)
    assert load_checkpoint(out / "models" / "run.pt")["epoch"] == 2


def test_a_run_whose_images_moved_resumes_with_data(dataset, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(dataset, images)
    train.main(flags(images, tmp_path, "--epochs", "2", "--name", "run", "--stop-after", "1"))
    images.rename(tmp_path / "moved")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(tmp_path / "models" / "run.pt")])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        f"error: {images}: the run's images are no longer there; if they have moved, resume with --resume "
        f"{tmp_path / 'models' / 'run.pt'} --data NEW_FOLDER\n")
    train.main(["--resume", str(tmp_path / "models" / "run.pt"), "--data", str(tmp_path / "moved")])
    assert "ignored" not in capsys.readouterr().out
    resumed = load_checkpoint(tmp_path / "models" / "run.pt")
    assert resumed["epoch"] == 2 and resumed["settings"]["data"] == str((tmp_path / "moved").resolve())


def test_with_workers_each_image_is_seeded_so_resuming_and_their_number_change_nothing(dataset, tmp_path):
    """Workers are started once (persistent: under spawn each start imports torch again) and augment each image
    from a seed drawn with the order, so neither an interruption nor the number of workers changes a run."""
    runs = {"two": ["--workers", "2"], "one": ["--workers", "1"], "resumed": ["--workers", "2", "--stop-after", "1"]}
    for name, extra in runs.items():
        train.main(flags(dataset, tmp_path, "--epochs", "3", "--lr", "2e-3", "--name", name, *extra))
    train.main(["--resume", str(tmp_path / "models" / "resumed.pt")])  # as printed: the run keeps its 2 workers
    two, one, resumed = (read_metrics(tmp_path, name) for name in runs)
    for key in KEYS - {"seconds"}:
        assert [r[key] for r in two] == [r[key] for r in one] == [r[key] for r in resumed], key


def test_workers_started_by_spawn_as_on_macos_and_windows_train(dataset, tmp_path):
    """Spawned workers get the dataset pickled (fork, Linux's way, copies the process instead): nothing in it may
    be unpicklable, and a cached one travels as the names of its files."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "start_method.py"), "spawn", "--",
                             *flags(dataset, tmp_path, "--epochs", "1", "--workers", "1", "--name", "spawned")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(read_metrics(tmp_path, "spawned")) == 1 and "spawn: " in result.stdout


def test_resume_keeps_the_runs_cache_and_refuses_a_checkpoint_moved_from_its_run(dataset, tmp_path, capsys):
    cache = tmp_path / "my-cache"
    train.main(flags(dataset, tmp_path / "out", "--epochs", "3", "--name", "run", "--stop-after", "1",
                     "--cache-dir", str(cache)))
    copy = tmp_path / "run-copy.pt"
    shutil.copy(tmp_path / "out" / "models" / "run.pt", copy)
    (tmp_path / "out" / "models" / "run.pt").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # it would have written tmp_path/../models/run.pt
        train.main(["--resume", str(copy)])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        f"error: {copy}: resuming writes the run run to {tmp_path.parent / 'models' / 'run.pt'}, which this file is "
        f"not; put it back there, or start a new run from its weights: --pretrained {copy}\n")
    shutil.move(copy, tmp_path / "out" / "models" / "run.pt")
    shutil.rmtree(cache)
    train.main(["--resume", str(tmp_path / "out" / "models" / "run.pt"), "--stop-after", "1"])
    assert len(list(cache.glob("*.pt"))) == 4  # the run's own cache again (two splits: an index and a part each)
    assert load_checkpoint(tmp_path / "out" / "models" / "run.pt")["epoch"] == 2


def test_a_val_folder_is_the_test_split_and_named_so(dataset, tmp_path, capsys):
    shutil.copytree(dataset / "train", tmp_path / "ds" / "train")
    shutil.copytree(dataset / "test", tmp_path / "ds" / "val")
    train.main(flags(tmp_path / "ds", tmp_path, "--epochs", "1", "--warmup-epochs", "2", "--name", "val"))
    out = capsys.readouterr().out
    assert f"data: test: {N_TEST} images in 2 classes from {tmp_path / 'ds' / 'val'}\n" in out
    assert "note: --warmup-epochs 2 spans the whole run (--epochs 1): the learning rate never reaches --lr" in out
    train.main(flags(tmp_path / "ds", tmp_path, "--epochs", "1", "--name", "val2"))  # a warm-up of the whole
    assert "spans the whole run" not in capsys.readouterr().out  # run reaches the rate at its last step


def test_resuming_a_finished_run_says_so_and_writes_nothing(reference, capsys):
    out = reference[0]
    files = [out / "models" / "ref.pt", *(out / "results" / "ref").iterdir()]
    before = {f: f.stat().st_mtime_ns for f in files}
    metrics = train.main(["--resume", str(out / "models" / "ref.pt"), "--device", "cpu"])
    assert "finished all 4 epochs, nothing to resume" in capsys.readouterr().out
    assert metrics == read_metrics(out, "ref") and {f: f.stat().st_mtime_ns for f in files} == before


def test_resuming_an_earlier_checkpoint_would_overwrite_the_latest_and_is_refused(dataset, tmp_path, capsys):
    models = tmp_path / "models"
    train.main(flags(dataset, tmp_path, "--epochs", "3", "--name", "run", "--stop-after", "1"))
    (models / "epoch1.pt").write_bytes((models / "run.pt").read_bytes())  # as RUN-best.pt is, once the run goes on
    train.main(["--resume", str(models / "run.pt"), "--stop-after", "1"])
    latest, _ = (models / "run.pt").read_bytes(), capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(models / "epoch1.pt")])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        f"error: {models / 'epoch1.pt'}: an earlier checkpoint of the run saved in {models / 'run.pt'}, which "
        f"resuming would overwrite; resume {models / 'run.pt'}, or start a new run from these weights: --pretrained "
        f"{models / 'epoch1.pt'}\n")
    assert (models / "run.pt").read_bytes() == latest and load_checkpoint(models / "run.pt")["epoch"] == 2


def format_1(ckpt):
    """A checkpoint as the code before vit.settings wrote it: train.py's arguments as `args` (with the flags that the
    recipe filled in, sizes left to the model as None), in format vit-checkpoint-1."""
    args = dict(ckpt.pop("settings"), image_size=None, num_layers=None, given=["data"], resume=None)
    return dict(ckpt, format="vit-checkpoint-1", args=args)


def test_a_run_saved_in_format_1_resumes_and_goes_on_in_format_2(dataset, tmp_path, reference, capsys):
    path = tmp_path / "models" / "ref.pt"
    train.main(flags(dataset, tmp_path, "--epochs", "4", "--lr", "2e-3", "--name", "ref", "--stop-after", "2"))
    save_atomically(format_1(load_checkpoint(path)), path)
    train.main(["--resume", str(path)])
    resumed = load_checkpoint(path)
    assert resumed["format"] == FORMAT and resumed["settings"]["num_layers"] == 2  # from the model as built
    for a, b in zip(resumed["metrics"], read_metrics(reference[0], "ref")):  # as if never stopped
        assert {k: a[k] for k in KEYS - {"seconds"}} == {k: b[k] for k in KEYS - {"seconds"}}


def test_run_saved_before_trivial_augment_was_a_flag_resumes_with_it_on(dataset, tmp_path, capsys):
    path = tmp_path / "models" / "old.pt"
    train.main(flags(dataset, tmp_path, "--epochs", "2", "--name", "old", "--stop-after", "1"))
    old = format_1(load_checkpoint(path))
    assert old["args"]["trivial_augment"] == 0.0  # the from-scratch recipe's
    del old["args"]["trivial_augment"]
    save_atomically(old, path)
    train.main(["--resume", str(path), "--device", "cpu"])
    resumed = load_checkpoint(path)
    assert resumed["epoch"] == 2 and resumed["settings"]["trivial_augment"] == 1.0  # as every run before the flag


def test_ctrl_c_keeps_last_epoch_and_says_how_to_resume(dataset, tmp_path, monkeypatch, capsys):
    original, calls = train.train_epoch, []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", interrupted_in_epoch_2)
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--epochs", "3", "--name", "run"))
    assert exit_.value.code == 130
    assert f"--resume {tmp_path / 'models' / 'run.pt'}" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "models" / "run.pt")["epoch"] == 1


def torchvision_weights(path):
    """A tiny torchvision ViT's state dict (random weights, 1000-class head), saved like an ImageNet file."""
    torch.manual_seed(1)
    tv = TorchvisionViT(image_size=16, patch_size=4, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768)
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_(std=0.05)
    torch.save(tv.state_dict(), path)
    return build_model("vit_ti_16", image_size=16, patch_size=4, num_layers=2, pretrained=path).state_dict()


def test_freeze_runs_backbone_once_per_image(dataset, tmp_path, monkeypatch, capsys):
    expected = torchvision_weights(tmp_path / "tv.pth")
    original, seen = VisionTransformer.forward_features, []

    def counting(self, x, *args, **kwargs):
        seen.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "forward_features", counting)
    metrics = train.main(flags(dataset, tmp_path, "--model", "vit_ti_16", "--pretrained", str(tmp_path / "tv.pth"),
                               "--freeze", "--epochs", "3", "--name", "probe", "--mixup", "0.5"))
    assert sum(seen) == N_TRAIN + N_TEST  # 3 epochs, yet every image went through the backbone once
    assert "ignored with --freeze: --mixup (the frozen backbone sees each image once, unaugmented)" in \
        capsys.readouterr().out
    assert len(metrics) == 3 and metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    state = load_checkpoint(tmp_path / "models" / "probe.pt")["state_dict"]
    for key, value in expected.items():  # the backbone is the pretrained one, untouched; the head is new
        if key.startswith("head."):
            assert value.shape[0] == 1000 and state[key].shape[0] == 2 and state[key].abs().sum() > 0
        else:
            assert torch.equal(state[key], value), key


def freeze_features(rank, world, dataset, out=None):
    """--freeze's training features (make_loaders) of the first 23 training images, and how many images (training
    and test) went through the backbone in this process; with `out`, as process `rank` of `world` (gloo), saved
    there. A function of the module: torch.multiprocessing.spawn's processes import it."""
    if out:
        dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same tiny model in every process
    model = build_model("vit_ti_16", num_classes=2, image_size=16, patch_size=4, num_layers=2)
    decoded = {split: load_split(dataset / split, ["bright", "dark"], model.preprocess)
               for split in ("train", "test")}
    decoded["train"].images, decoded["train"].labels = decoded["train"].images[:23], decoded["train"].labels[:23]
    args = argparse.Namespace(freeze=True, batch_size=4, workers=0, trivial_augment=0.0, augment="auto", seed=0)
    seen, original = [], model.forward_features
    model.forward_features = lambda x: seen.append(len(x)) or original(x)
    loader = make_loaders(decoded, model, args, torch.Generator(), (torch.device("cpu"), world, rank),
                          contextlib.nullcontext)[0]
    result = (*loader.dataset.tensors, sum(seen))
    if out:
        torch.save(result, out / f"{rank}.pt")
        dist.destroy_process_group()
    return result


def test_freeze_under_torchrun_each_process_computes_its_share_of_the_features(dataset, tmp_path):
    """Each of 2 processes puts its share of the training images through the backbone (12 and 11 of 23), then all
    hold every image's features in order, as one process computes them."""
    features, labels, seen = freeze_features(0, 1, dataset)
    assert seen == 23 + N_TEST and labels.tolist() == [0] * 12 + [1] * 11
    mp.spawn(freeze_features, (2, dataset, tmp_path), nprocs=2)
    for rank in range(2):
        shared_features, shared_labels, shared_seen = torch.load(tmp_path / f"{rank}.pt")
        assert shared_seen == own_share(23, 2, rank) + N_TEST // 2
        assert torch.equal(shared_labels, labels) and torch.allclose(shared_features, features, atol=1e-5)


def test_pretrained_torchvision_file_builds_the_table_1_model_of_its_shapes(dataset, tmp_path, capsys):
    torch.manual_seed(1)  # vit_ti_16's widths and patches, 2 layers, 32 px: no --model, --patch-size or --num-layers
    tv = TorchvisionViT(image_size=32, patch_size=16, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768)
    torch.save(tv.state_dict(), tmp_path / "tv16.pth")
    train.main(["--data", str(dataset), "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--pretrained", str(tmp_path / "tv16.pth"), "--freeze", "--epochs", "1",
                "--name", "tv"])
    assert "model: vit_ti_16 32px patch 16, " in capsys.readouterr().out
    config = load_checkpoint(tmp_path / "models" / "tv.pt")["model"]["config"]
    assert (config["num_layers"], config["patch_size"], config["hidden_dim"]) == (2, 16, 192)


def test_pretrained_state_dict_of_a_hybrid_builds_its_model(dataset, tmp_path, capsys):
    hybrid = build_model("vit_ti_16", num_classes=5, image_size=16, patch_size=4, num_layers=1, stem="conv")
    torch.save(hybrid.state_dict(), tmp_path / "hybrid.pth")  # no flags: the conv stem's 4 px patches from its shapes
    train.main(["--data", str(dataset), "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--pretrained", str(tmp_path / "hybrid.pth"), "--freeze", "--epochs", "1",
                "--name", "hybrid"])
    assert "model: vit_ti_16 16px patch 4, " in capsys.readouterr().out
    config = load_checkpoint(tmp_path / "models" / "hybrid.pt")["model"]["config"]
    assert (config["num_layers"], config["patch_size"], config["stem"]) == (1, 4, "conv")


def test_pretrained_full_finetune_starts_from_the_weights(dataset, tmp_path):
    torch.manual_seed(2)
    source = build_model("vit_ti_16", num_classes=5, image_size=16, patch_size=4, num_layers=2)
    torch.save(source.state_dict(), tmp_path / "ours.pt")
    # lr 0: nothing moves, so the saved weights must be the file's (the 5-class head is replaced by a 2-class one)
    train.main(flags(dataset, tmp_path, "--model", "vit_ti_16", "--pretrained", str(tmp_path / "ours.pt"),
                     "--lr", "0", "--epochs", "1", "--name", "ft"))
    ckpt = load_checkpoint(tmp_path / "models" / "ft.pt")
    assert ckpt["settings"]["pretrained"] == str(tmp_path / "ours.pt") and ckpt["settings"]["mixup"] == 0.0  # fine-tune
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(ckpt["state_dict"][key], value), key
    assert ckpt["state_dict"]["head.weight"].shape == (2, 192)


def test_pretrained_from_our_checkpoint_builds_its_model(reference, dataset, tmp_path):
    source = reference[0] / "models" / "ref.pt"  # vit_ti_16, 16 px, 4 px patches from the conv stem, 2 layers
    train.main(["--data", str(dataset), "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                "--batch-size", "8", "--device", "cpu", "--pretrained", str(source), "--lr", "0", "--epochs", "1",
                "--name", "more"])  # no model flags: the fine-tuning recipe alone would build a 224 px vit_b_16
    old, new = load_checkpoint(source), load_checkpoint(tmp_path / "models" / "more.pt")
    assert new["model"]["name"] == "vit_ti_16"
    for key in ("image_size", "patch_size", "num_layers", "hidden_dim", "stem"):
        assert new["model"]["config"][key] == old["model"]["config"][key], key
    for key, value in old["state_dict"].items():  # lr 0: the checkpoint's weights (batch-norm statistics move)
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(new["state_dict"][key], value), key


def test_with_data_alone_photos_get_the_photo_recipe_and_small_images_the_small_one(dataset, tmp_path, capsys):
    photos = tmp_path / "photos"
    for split, n in (("train", 3), ("test", 1)):
        for name, low in (("light", 150), ("dark", 0)):
            (photos / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(low, low + 106, (128, 160 if i % 2 else 128, 3), dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(photos / split / name / f"{i}.jpg")
    common = ["--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--epochs", "1"]
    train.main(["--data", str(photos), "--name", "photos", *common])  # --epochs given: it wins
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("recipe: ")]
    assert said == ["recipe: photos (the training images' median shorter side is 128 px): 64 px, 8 px patches, 6 "
                    f"layers, {train.PHOTOS['epochs']} epochs for 6 images; a flag given overrides it (python train.py "
                    "--help)"]
    ckpt = load_checkpoint(tmp_path / "models" / "photos.pt")
    config, saved = ckpt["model"]["config"], ckpt["settings"]
    assert (config["image_size"], config["patch_size"], config["num_layers"], config["stem"]) == (64, 8, 6, "conv")
    assert (saved["epochs"], saved["batch_size"], saved["lr"]) == (1, train.PHOTOS["batch_size"], train.PHOTOS["lr"])
    train.main(["--data", str(dataset), "--name", "small", *common])  # 20 x 24 px images
    assert "recipe: small images (the training images' median shorter side is 20 px, under 64)" in \
        capsys.readouterr().out
    config = load_checkpoint(tmp_path / "models" / "small.pt")["model"]["config"]
    assert (config["image_size"], config["patch_size"], config["num_layers"]) == (32, 8, 12)


def test_a_larger_folder_of_photos_gets_as_many_steps_in_fewer_epochs():
    epochs, most = train.PHOTOS["epochs"], train.PHOTO_IMAGES
    assert train.photo_epochs(225) == train.photo_epochs(most) == epochs
    assert train.photo_epochs(2 * most) == epochs // 2 and train.photo_epochs(10**7) == 1


def write_colours(folder, n, seed):
    """n noisy 28 px images per class, 'red', 'green' and 'blue' (that channel light): classes to pretrain on."""
    g = torch.Generator().manual_seed(seed)
    for channel, name in enumerate(("red", "green", "blue")):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            pixels = torch.randint(0, 100, (28, 28, 3), generator=g, dtype=torch.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels.numpy()).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """The checkpoint of a run from scratch on three other classes (16 px, 4 px patches of the conv stem, 2 layers):
    a backbone to transfer to the bright/dark dataset."""
    root, out = tmp_path_factory.mktemp("colours"), tmp_path_factory.mktemp("pretraining")
    write_colours(root / "train", 6, seed=0)
    write_colours(root / "test", 3, seed=1)
    train.main(flags(root, out, "--stem", "conv", "--epochs", "2", "--lr", "2e-3", "--name", "pre"))
    return out / "models" / "pre.pt"


def transfer(dataset, out, pretrained, *extra):
    """train.py flags for a run on the bright/dark dataset from the checkpoint `pretrained`: no model flags."""
    return ["--data", str(dataset), "--out-dir", str(out), "--cache-dir", str(out / "cache"), "--device", "cpu",
            "--batch-size", "8", "--pretrained", str(pretrained), *extra]


def predicted_classes(checkpoint, image):
    """The class names predict.py --json gives for an image."""
    result = subprocess.run([sys.executable, str(REPO / "predict.py"), "--model", str(checkpoint), str(image),
                             "--json", "--no-figures", "--topk", "5"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {p["class"] for p in json.loads(result.stdout)["predictions"]}


def test_fine_tuning_a_run_on_other_classes_at_another_size_starts_from_its_backbone(pretrained_run, dataset,
                                                                                     tmp_path, capsys):
    # lr 0: the weights saved are those fine-tuning started from; 24 px instead of the run's 16: a 6 x 6 grid
    train.main(transfer(dataset, tmp_path, pretrained_run, "--image-size", "24", "--lr", "0", "--epochs", "1",
                        "--name", "ft"))
    out = capsys.readouterr().out
    assert f"recipe: fine-tune ours (--pretrained {pretrained_run}, a run from scratch): {train.PHOTOS['epochs']} " \
        "epochs for 25 images" in out and "model: vit_ti_16 24px patch 4, " in out  # broken.png too
    old, new = load_checkpoint(pretrained_run), load_checkpoint(tmp_path / "models" / "ft.pt")
    assert old["classes"] == ["blue", "green", "red"] and new["classes"] == ["bright", "dark"]
    assert new["state_dict"]["head.weight"].shape == (2, 192)  # a new head: the old one scored colours
    config = new["model"]["config"]
    assert (config["image_size"], config["patch_size"], config["num_layers"], config["stem"]) == (24, 4, 2, "conv")
    assert new["preprocess"]["crop_size"] == 24 and new["preprocess"]["resize_size"] == round(24 * 256 / 224)
    for key, value in old["state_dict"].items():  # (batch norm's running statistics move in training mode)
        if not key.startswith("head.") and "running_" not in key and "num_batches" not in key:
            expected = interpolate_pos_embed(value, 6) if key == "embed.pos_embed" else value
            assert torch.equal(new["state_dict"][key], expected), key
    assert predicted_classes(tmp_path / "models" / "ft.pt", dataset / "test" / "dark" / "0.png") == {"bright", "dark"}


def test_a_linear_probe_of_a_run_sees_each_image_once_and_leaves_its_backbone_as_it_was(pretrained_run, dataset,
                                                                                         tmp_path, monkeypatch):
    original, seen = VisionTransformer.forward_features, []

    def counting(self, x, *args, **kwargs):
        seen.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "forward_features", counting)
    metrics = train.main(transfer(dataset, tmp_path, pretrained_run, "--freeze", "--epochs", "3", "--name", "probe"))
    assert sum(seen) == N_TRAIN + N_TEST and metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    old, new = load_checkpoint(pretrained_run), load_checkpoint(tmp_path / "models" / "probe.pt")
    for key, value in old["state_dict"].items():  # batch norm too: the conv stem ran in evaluation mode
        if not key.startswith("head."):
            assert torch.equal(new["state_dict"][key], value), key
    assert new["state_dict"]["head.weight"].shape == (2, 192) and new["state_dict"]["head.weight"].abs().sum() > 0
    monkeypatch.undo()
    assert predicted_classes(tmp_path / "models" / "probe.pt", dataset / "test" / "dark" / "0.png") == {"bright",
                                                                                                        "dark"}


def test_a_fine_tuning_run_resumed_equals_it_uninterrupted(pretrained_run, dataset, tmp_path, capsys):
    common = transfer(dataset, tmp_path, pretrained_run, "--epochs", "2", "--lr", "1e-3")
    whole = train.main(common + ["--name", "whole"])
    train.main(common + ["--name", "part", "--stop-after", "1"])
    resumed = train.main(["--resume", str(tmp_path / "models" / "part.pt")])
    assert len(resumed) == len(whole) == 2
    for a, b in zip(resumed, whole):
        assert {k: a[k] for k in KEYS - {"seconds"}} == {k: b[k] for k in KEYS - {"seconds"}}


def test_pretrained_flags_that_contradict_the_weights_and_a_results_folder_are_one_line(pretrained_run, dataset,
                                                                                          tmp_path, capsys):
    runs = pretrained_run.parent.parent
    for extra, message in (
            (["--pretrained", str(pretrained_run), "--stem", "patch"],
             f"{pretrained_run}: weights for --model vit_ti_16 --patch-size 4 --num-layers 2 --stem conv, not "
             "--stem patch; leave out --stem: the model is built from the weights"),
            (["--pretrained", str(runs / "results" / "pre")],
             f"{runs / 'results' / 'pre'}: a run's results folder, not a checkpoint; pass its checkpoint, "
             f"{pretrained_run}")):
        with pytest.raises(SystemExit) as exit_:
            train.main(["--data", str(dataset), "--out-dir", str(tmp_path), "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err == f"error: {message}\n", err
    assert not (tmp_path / "models").exists()


def make_bad(kind, root):
    """A dataset folder with one problem."""
    write_split(root / "train", 2, seed=0)
    write_split(root / "test", 2, seed=1)
    if kind == "no train/":
        os.rename(root / "train", root / "elsewhere")
    elif kind == "empty class":
        for p in (root / "test" / "dark").iterdir():
            p.unlink()
    elif kind == "class mismatch":
        os.rename(root / "test" / "dark", root / "test" / "black")
    return root


@pytest.mark.parametrize("kind, message", [
    ("no train/", r"train: missing"),
    ("empty class", r"test/dark: no images"),
    ("class mismatch", r"different class folders"),
])
def test_bad_dataset_is_one_line_error(kind, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(make_bad(kind, tmp_path / "ds"), tmp_path))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_ctrl_c_before_the_epochs_is_one_line(dataset, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):  # e.g. while a large folder is decoded
        raise KeyboardInterrupt
    monkeypatch.setattr(vit.loaders, "load_split", interrupted)
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path))
    assert exit_.value.code == 130 and capsys.readouterr().err == "\ninterrupted\n"


def test_missing_data_path_as_user_sees_it(tmp_path):
    result = run_script("--data", str(tmp_path / "nowhere"), "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'nowhere'}: no such folder")


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda:7"], r"--device cuda:7: "),
    (["--device", "tpu"], r"--device tpu: unknown device"),
    (["--freeze"], r"--freeze .* add --pretrained"),
    (["--image-size", "18", "--patch-size", "6", "--stem", "conv"], r"--image-size/.*--stem: .* power-of-two"),
])
def test_bad_flags_are_one_line_errors(extra, message, dataset, tmp_path, capsys):
    if extra[-1] == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, *extra))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and re.match("error: " + message, err), err
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()  # a failed start leaves nothing


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size: must be at least 1, not 0"),
    (["--epochs", "x"], "--epochs: invalid int value: 'x'"),
    (["--lr", "-1"], "--lr: must be at least 0, not -1"),
    (["--mixup", "1.5"], "--mixup: must be at least 0 and at most 1, not 1.5"),
    (["--drop-path", "1"], "--drop-path: must be at least 0 and below 1, not 1"),
    (["--workers", "-1"], "--workers: must be at least 0, not -1"),
    (["--compile", "max-autotune"], "--compile: invalid choice: 'max-autotune' (choose from 'default', "
                                    "'reduce-overhead')"),
    (["--name", "../../escape"], "--name: must be a plain name, not '../../escape' (--out-dir says where runs go)"),
    (["--name", "runs/a"], "--name: must be a plain name, not 'runs/a' (--out-dir says where runs go)"),
])
def test_flags_out_of_range_are_refused_before_anything_runs(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--out-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1].endswith(f": error: argument {message}"), err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--lr", "inf"], "--lr: must be a finite number, not inf"),  # trained to NaN weights and said "done"
    (["--weight-decay", "inf"], "--weight-decay: must be a finite number, not inf"),
    (["--warmup-epochs", "inf"], "--warmup-epochs: must be a finite number, not inf"),  # an OverflowError
    (["--seed", str(2**64)], f"--seed: must be at least {-2**63} and at most {2**63 - 1}, not {2**64}"),
    *(([flag, ""], f"{flag}: must not be empty (a shell variable that is not set?)")  # "": the current folder
      for flag in ("--data", "--out-dir", "--cache-dir", "--resume")),
])
def test_infinite_values_and_seeds_torch_cannot_take_are_refused(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(extra)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1].endswith(f": error: argument {message}"), err


def test_a_divergence_in_the_epochs_last_step_is_caught_by_the_test_loss(dataset, tmp_path, capsys):
    # one step per epoch: its training loss is computed before the update that makes every weight NaN
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--epochs", "1", "--batch-size", str(N_TRAIN), "--weight-decay", "1e30",
                         "--warmup-epochs", "0", "--name", "wd"))
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err).startswith("error: epoch 1: test loss is nan; the run diverged")
    assert not (tmp_path / "models" / "wd.pt").exists()


def test_resume_of_a_model_without_its_training_state_is_one_line(tmp_path, capsys):
    model = build_model("vit_ti_16", num_classes=2, image_size=16, patch_size=8, num_layers=1)
    save_atomically(model_checkpoint(model), tmp_path / "model.pt")  # a model, as the Python API saves one
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: {tmp_path / 'model.pt'}: holds a model but not the "
                                                    "training state") and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"--pretrained {tmp_path / 'model.pt'}")


@pytest.mark.parametrize("script, fake", [(["train.py"], "torch"), (["predict.py"], "torch"),
                                          (["-m", "vit.compare"], "matplotlib")])
def test_ctrl_c_while_the_script_imports_is_one_line(script, fake, tmp_path):
    (tmp_path / f"{fake}.py").write_text("raise KeyboardInterrupt  # as if Ctrl-C came while it imports\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, *script, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stderr == "\ninterrupted\n" and result.stdout == ""
    assert result.returncode == (-signal.SIGINT if os.name == "posix" else result.returncode)  # ends interrupted


@pytest.mark.parametrize("given, mode", [(["--compile"], "default"),
                                         (["--compile", "reduce-overhead"], "reduce-overhead")])
def test_compile_flag_compiles_the_model_in_its_mode(given, mode, dataset, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode: compiled.append((module, mode)) or module)
    train.main(flags(dataset, tmp_path, "--epochs", "1", "--name", "c", *given))
    assert [(type(module), m) for module, m in compiled] == [(VisionTransformer, mode)]


def test_out_dir_that_cannot_hold_folders_stops_before_training(dataset, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--out-dir", str(tmp_path / "a_file")))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == f"error: {tmp_path / 'a_file' / 'models'}: cannot create this folder " \
        f"({tmp_path / 'a_file'} is a file, not a folder); choose another place to write (--out-dir)\n", err


def test_existing_run_is_not_overwritten(reference, dataset, capsys):
    out = reference[0]
    before = (out / "models" / "ref.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, out, "--name", "ref"))
    assert exit_.value.code == 2 and "--resume" in capsys.readouterr().err
    assert (out / "models" / "ref.pt").read_bytes() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path, monkeypatch, capsys):
    original, steps = VisionTransformer.forward, []

    def nan_from_epoch_2(self, x, *args, **kwargs):
        out = original(self, x, *args, **kwargs)
        if self.training:
            steps.append(1)
        return out * math.nan if len(steps) > math.ceil(N_TRAIN / 8) else out

    monkeypatch.setattr(VisionTransformer, "forward", nan_from_epoch_2)
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--epochs", "3", "--name", "nan"))
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err).startswith("error: epoch 2: training loss is nan")
    ckpt = load_checkpoint(tmp_path / "models" / "nan.pt")
    assert ckpt["epoch"] == 1 and model_from_checkpoint(ckpt) is not None
    assert len(read_metrics(tmp_path, "nan")) == 1


def test_huge_learning_rate_diverges_with_a_message(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0", "--name", "big"))
    assert exit_.value.code == 2 and "training loss is" in capsys.readouterr().err
    assert not (tmp_path / "models" / "big.pt").exists()


@pytest.mark.parametrize("extra, says", [(["--augment", "device"], "augment: whole batches on cpu (vit/augment.py); "
                                                                    "--workers only prepares the test images\n"),
                                          (["--precision", "bf16"], "")])
def test_batches_augmented_on_the_device_and_bf16_on_the_cpu_learn_too(extra, says, reference, dataset, tmp_path,
                                                                       capsys):
    train.main(flags(dataset, tmp_path, "--epochs", "4", "--lr", "2e-3", "--name", "other", *extra))
    assert says in capsys.readouterr().out
    metrics, per_image_fp32 = read_metrics(tmp_path, "other"), read_metrics(reference[0], "ref")
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["test_acc"] >= 0.9 and metrics[-1]["train_loss"] != per_image_fp32[-1]["train_loss"]


def test_augment_device_that_would_not_fit_names_the_images_padding_it(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(augment, "physical_memory", lambda: 1000)  # 1 kB: nothing fits
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--augment", "device", "--name", "big"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and error.startswith("error: --augment device: the training images padded to ")
    assert error.endswith("over 25% of this machine's memory; crop or remove those images, or use --augment workers")


def test_precision_picks_the_autocast_dtype():
    cpu, a = torch.device("cpu"), torch.ones(4, 4)
    for precision, dtype in (("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        autocast, scaler = mixed_precision(cpu, precision)
        with autocast():
            assert (a @ a).dtype == dtype, precision
        assert not scaler.is_enabled()  # a gradient scaler only for fp16 (CUDA without bf16)
    with pytest.raises(UserError, match=r"^--precision bf16: not supported on mps; use --precision auto or fp32$"):
        mixed_precision(torch.device("mps"), "bf16")


@pytest.mark.parametrize("world, rank, master",
                         [("2", "1", False), ("2", "0", True), ("1", "3", True), (None, None, True)])
def test_only_rank_0_prints_even_before_the_process_group_exists(world, rank, master, monkeypatch, capsys):
    for key, value in (("WORLD_SIZE", world), ("RANK", rank)):
        monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
    log("hello")
    assert capsys.readouterr().out == ("hello\n" if master else "")
    with pytest.raises(SystemExit) as exit_:  # a mistake every process finds is said once, by rank 0
        train.main(["--data", "/no/such/folder"])
    known = "pizza_steak_sushi, pizza_steak_sushi_20_percent, tiny-imagenet-200"
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        f"error: /no/such/folder: no such folder and not a known dataset name (known: {known}); pass a folder "
        "containing train/ and test/, or one of the names\n" if master else "")


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


@pytest.mark.parametrize("where", ["workers", "device"])
def test_ddp_two_processes_write_once(where, dataset, tmp_path):
    result = run_script(*flags(dataset, tmp_path, "--epochs", "1", "--name", "ddp", "--augment", where),
                        launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/1 |") == 1 and "x 2 processes" in result.stdout
    metrics = read_metrics(tmp_path, "ddp")
    assert len(metrics) == 1
    ckpt = load_checkpoint(tmp_path / "models" / "ddp.pt")  # counted over all test images, by the model saved (the
    accuracy, loss = accuracy_of(model_from_checkpoint(ckpt), dataset, loss=True)  # conv stem's batch norm: rank 0's)
    assert (accuracy, loss) == (pytest.approx(metrics[0]["test_acc"]), pytest.approx(metrics[0]["test_loss"], 1e-5))


def test_resumed_in_another_number_of_processes_a_run_goes_on_and_says_so(dataset, tmp_path, capsys):
    """The checkpoint records its processes, as each deals its own share of the data: resumed in another number,
    the run goes on and says in one line that its order differs, and how to resume it in the same; a checkpoint
    from before the record says nothing. Under torchrun the training figures count each image once (23:
    DistributedSampler pads them to 24)."""
    images = tmp_path / "images"
    shutil.copytree(dataset, images)
    (images / "train" / "dark" / "0.png").unlink()
    result = run_script(*flags(images, tmp_path, "--epochs", "4", "--name", "run", "--stop-after", "1"),
                        launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "models" / "run.pt"
    ckpt = load_checkpoint(path)
    correct = ckpt["metrics"][0]["train_acc"] * (N_TRAIN - 1)
    assert ckpt["world_size"] == 2 and correct == pytest.approx(round(correct))  # out of 23, not 24
    older = tmp_path / "older"  # the same run, its checkpoint written before the record
    for folder in ("models", "results"):
        shutil.copytree(tmp_path / folder, older / folder)
    del ckpt["world_size"], ckpt["path"]
    save_atomically(ckpt, older / "models" / "run.pt")
    capsys.readouterr()
    train.main(["--resume", str(path), "--stop-after", "1"])  # 2 processes, now 1
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: the run trained in 2 processes, this session in 1: the data order, and so the results, "
                     f"differ from an uninterrupted run's (the same order: {train.resume_cli(2, path.resolve())})"]
    train.main(["--resume", str(path), "--stop-after", "1"])  # 1, now 1
    train.main(["--resume", str(older / "models" / "run.pt"), "--stop-after", "1"])  # not recorded, now 1
    assert "note:" not in capsys.readouterr().out
    assert [(c["epoch"], c["world_size"]) for c in map(load_checkpoint, (path, older / "models" / "run.pt"))] == \
        [(3, 1), (2, 1)]


def test_a_run_of_one_process_resumed_in_two_is_noted_and_an_unrecorded_one_is_not(dataset, tmp_path, monkeypatch,
                                                                                  capsys):
    """The note without torchrun (2 processes faked, the session stopped after its note): a run of 1 process is
    '1 process', resumed by python; a checkpoint from before the record says nothing, whatever the number now."""
    train.main(flags(dataset, tmp_path, "--epochs", "2", "--name", "run", "--stop-after", "1"))
    path = tmp_path / "models" / "run.pt"

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(train, "init_processes", lambda device: (device, 2, 0))
    monkeypatch.setattr(train, "mixed_precision", started)
    capsys.readouterr()
    with pytest.raises(Started):
        train.main(["--resume", str(path)])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: the run trained in 1 process, this session in 2: the data order, and so the results, "
                     f"differ from an uninterrupted run's (the same order: {train.resume_cli(1, path.resolve())})"]
    ckpt = load_checkpoint(path)
    del ckpt["world_size"], ckpt["path"]
    save_atomically(ckpt, path)
    with pytest.raises(Started):
        train.main(["--resume", str(path)])
    assert "note:" not in capsys.readouterr().out


def test_an_infinite_test_loss_stops_the_run_too(dataset, tmp_path, monkeypatch, capsys):
    """Huge but finite logits give a cross-entropy of inf in float32, summed over the test set sooner still."""
    original = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: (math.inf, *original(*args, **kwargs)[1:]))
    with pytest.raises(SystemExit) as exit_:
        train.main(flags(dataset, tmp_path, "--epochs", "1", "--name", "inf"))
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err).startswith("error: epoch 1: test loss is inf; the run diverged")
    assert not (tmp_path / "models" / "inf.pt").exists()


def test_ddp_compiled_splits_the_graph_at_its_buckets_without_warnings(tmp_path, monkeypatch):
    """DDP(torch.compile(model)): gradients can be sent while backward goes on; the bundled set (16 images a process
    per step) is where compiling gives the conv stem's projection a gradient of other strides, which DDP warned of."""
    monkeypatch.setenv("TORCH_LOGS", "ddp_graphs")
    result = run_script(*TINY, "--batch-size", "32", "--epochs", "1", "--compile", "--out-dir", str(tmp_path),
                        "--cache-dir", str(tmp_path / "cache"), "--name", "ddp", launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "---split graph---" in result.stderr and "epoch 1/1 |" in result.stdout
    assert "Grad strides" not in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixed_precision_run(dataset, tmp_path):
    result = run_script(*flags(dataset, tmp_path, "--epochs", "2", "--name", "gpu", "--device", "cuda",
                               "--workers", "2", "--compile", "reduce-overhead", "--stop-after", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    # resumed (eager: --compile is per session) from a checkpoint the background writer copied off the GPU
    result = run_script("--resume", str(tmp_path / "models" / "gpu.pt"), "--device", "cuda")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path, "gpu")
    assert len(metrics) == 2 and all(math.isfinite(m["train_loss"]) for m in metrics)
