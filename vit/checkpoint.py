"""Checkpoints that hold everything needed to rebuild, evaluate and resume a model (as nanoGPT's do)."""
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from vit.errors import UserError
from vit.files import replace_atomically, save_atomically
from vit.model import VisionTransformer
from vit.settings import FORMAT, as_data, saved_settings
from vit.weights import build_model, is_checkpoint, open_weights, safe_load


def cpu_copy(obj, cuda_devices=None):
    """A copy of obj's containers with every tensor copied to the CPU, safe from later in-place updates.

    With a set for cuda_devices, CUDA tensors are copied into pinned memory without waiting for the GPU (their
    devices are added to the set): the copies are complete once those devices' current streams reach this point.
    Every other copy is complete on return."""
    if isinstance(obj, torch.Tensor):
        if cuda_devices is not None and obj.is_cuda:
            try:  # pinned memory can be refused (it is scarce under WSL, for one): then the plain copy below
                pinned = torch.empty_like(obj, device="cpu", pin_memory=True)
            except RuntimeError:
                pass
            else:
                cuda_devices.add(obj.device)
                return pinned.copy_(obj.detach(), non_blocking=True)
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v, cuda_devices) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v, cuda_devices) for v in obj)
    return obj


def link_or_copy(src, path):
    """Atomically make path hold src's bytes: a hard link where the file system has them, else a copy."""
    def write(tmp):
        os.unlink(tmp)  # os.link makes the name itself
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    replace_atomically(path, write)


class CheckpointWriter:
    """Writes checkpoints from a background thread, so training does not wait for the disk.

    save() starts a CPU copy of the checkpoint and returns (from a GPU: into pinned memory, without waiting for
    the GPU; the thread waits for the copy before writing it; PyTorch keeps the freed pinned memory for the next
    copy). The thread writes the newest copy for each
    path (copies that a newer one replaced before their turn are skipped: only when epochs finish faster
    than the disk writes, and so at most one copy per path waits in memory besides the one being
    written); one copy saved to several paths is written once and linked. close() returns
    when everything saved is on disk, and raises a write's error. The thread is not a daemon, so even
    an interrupted Python finishes the files before it exits.
    """

    def __init__(self):
        self.pending, self.lock, self.thread, self.error = {}, threading.Lock(), None, None

    def save(self, obj, *paths):
        with self.lock:  # a copy still waiting for these paths is outdated: free its memory before copying again
            outdated = {Path(p): self.pending.pop(Path(p)) for p in paths if Path(p) in self.pending}
        devices = set()
        try:
            copy = cpu_copy(obj, devices)
        except BaseException:  # interrupted (Ctrl-C) while copying: the outdated copies are the newest whole ones
            with self.lock:
                for path, waiting in outdated.items():
                    self.pending.setdefault(path, waiting)
            raise
        del outdated
        copied = [torch.cuda.current_stream(d).record_event() for d in devices]  # the copies are done at these
        with self.lock:
            self.pending.update((Path(p), (copy, copied)) for p in paths)
            if self.thread is None:
                self.thread = threading.Thread(target=self._write, name="checkpoint-writer")
                self.thread.start()

    def _write(self):
        while True:
            with self.lock:
                if not self.pending or self.error:
                    self.thread = None
                    return
                jobs, self.pending = list(self.pending.items()), {}
            written = {}  # id(copy) -> the path it went to first
            try:
                for path, (copy, copied) in jobs:
                    if id(copy) in written:
                        link_or_copy(written[id(copy)], path)
                    else:
                        for event in copied:
                            event.synchronize()
                        save_atomically(copy, path)
                        written[id(copy)] = path
            except BaseException as e:
                self.error = e

    def close(self):
        """Wait until every saved checkpoint is written; raise the first write error."""
        while (thread := self.thread) is not None:
            thread.join()
        if self.error:
            error, self.error = self.error, None
            raise error


def load_checkpoint(path):
    """A checkpoint written by train.py; anything else is refused with a message naming the file."""
    ckpt = safe_load(path)
    if not is_checkpoint(ckpt):
        raise UserError(f"{path}: not a checkpoint of this project (written by train.py); plain weights go in as "
                        f"--pretrained {quoted(path)} (in Python: build_model(name, pretrained=PATH))")
    ckpt["path"] = str(path)
    return ckpt


def model_checkpoint(model):
    """The part of a checkpoint that model_from_checkpoint rebuilds the model from (train.py adds its state)."""
    return {"format": FORMAT, "model": {"name": model.name, "config": model.config},
            "state_dict": model.state_dict(), "classes": model.classes, "preprocess": model.preprocess}


OPTIMISATION = ("optimizer", "scheduler", "scaler")  # the training objects whose state a checkpoint holds
TRAINING_STATE = (*OPTIMISATION, "epoch", "metrics", "best_acc")  # what --resume reads, beside the settings


def training_checkpoint(model, objects, progress, settings, commit, world=1):
    """model_checkpoint plus what --resume needs: the state of the OPTIMISATION `objects` (a dict of them; a gradient
    scaler that does nothing has none), the `progress` (epoch, metrics, best_acc), the run's settings as plain data,
    the project's git commit and the number of processes (torchrun's: each deals its own share of the data, so the
    number decides the order)."""
    states = {k: o.state_dict() if k != "scaler" or o.is_enabled() else None for k, o in objects.items()}
    return {**model_checkpoint(model), **states, **progress, "settings": as_data(settings), "git_commit": commit,
            "world_size": world}


def restore_training(ckpt, objects):
    """Load a training_checkpoint's state into the OPTIMISATION `objects` -> its progress: (metrics, best_acc,
    epoch)."""
    for key, obj in objects.items():
        if ckpt[key] is not None:
            obj.load_state_dict(ckpt[key])
    return list(ckpt["metrics"]), ckpt["best_acc"], ckpt["epoch"]


def open_run(path):
    """The checkpoint of a run to --resume and the run's settings (vit.settings.saved_settings); one line for a file
    that holds a model but no run to continue."""
    ckpt = load_checkpoint(path)
    settings = saved_settings(ckpt)
    missing = [k for k in TRAINING_STATE if k not in ckpt] + (["settings"] if settings is None else [])
    if missing:  # e.g. model_checkpoint's file: a model, but no run to continue
        raise UserError(f"{path}: holds a model but not the training state that --resume continues "
                        f"({', '.join(missing)} missing); start a new run from its weights: "
                        f"--pretrained {quoted(path)}")
    return ckpt, settings


def run_files(out_dir, name):
    """The files of the run `name` under out_dir: (models/RUN.pt, models/RUN-best.pt, results/RUN/)."""
    models = Path(out_dir) / "models"
    return models / f"{name}.pt", models / f"{name}-best.pt", Path(out_dir) / "results" / name


def quoted(path):
    """`path` as a shell reads it back (quoted where it holds a space or another special character)."""
    return shlex.quote(str(path))


def check_run_files(last, best, resume=None):
    """Refuse a new run that would overwrite another's checkpoint `last`, and a --resume of a file other than its
    run's own (run_files): an earlier RUN-best.pt would be overwritten, a moved one resumed into the wrong folder. The
    flags it suggests are shell-quoted, to be pasted as they are."""
    if not resume:
        if last.exists():
            raise UserError(f"{last}: a run of this name exists; pick another --name or continue it with "
                            f"--resume {quoted(last)}")
    elif last.exists() and not os.path.samefile(resume, last):  # e.g. RUN-best.pt of a run that went on
        raise UserError(f"{resume}: an earlier checkpoint of the run saved in {last}, which resuming would overwrite; "
                        f"resume {quoted(last)}, or start a new run from these weights: --pretrained {quoted(resume)}")
    elif not last.exists() and Path(resume).resolve() != best.resolve():  # moved, copied or renamed
        raise UserError(f"{resume}: resuming writes the run {last.stem} to {last}, which this file is not; put it back "
                        f"there, or start a new run from its weights: --pretrained {quoted(resume)}")


def model_from_checkpoint(ckpt):
    """Rebuild the model from a checkpoint (as load_checkpoint returns it, or its path) and load its weights
    strictly."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt)
    try:
        model = VisionTransformer(**ckpt["model"]["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ckpt.get('path', 'checkpoint')}: incomplete or invalid model description ({e!r}); "
                        "the file is damaged or was edited") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise UserError(f"{ckpt.get('path', 'checkpoint')}: its weights do not match its model configuration "
                        f"({first}); the file is damaged or was edited") from None
    model.name = ckpt["model"].get("name")
    model.classes = list(ckpt["classes"]) if ckpt.get("classes") else None
    if ckpt.get("preprocess"):
        model.preprocess = dict(ckpt["preprocess"])
    return model


def start_model(settings, classes, ckpt=None, source=None):
    """The model a training run starts from (train.py), one branch per case: --resume (the run's own model and
    weights, as saved in `ckpt`); random weights, initialised as torchvision's; pretrained weights (`source`, as
    vit.weights.open_weights read them: torchvision's ImageNet weights by name or in a file, or a checkpoint of
    ours), with a new head for `classes` where theirs differs."""
    torch.manual_seed(settings.seed)
    if ckpt is not None:
        return model_from_checkpoint(ckpt)
    shape = {k: getattr(settings, k) for k in ("image_size", "patch_size", "num_layers", "stem", "drop_path")}
    try:
        return build_model(settings.model, num_classes=len(classes), classes=classes, pretrained=source, **shape)
    except ValueError as e:
        raise UserError(f"--image-size/--patch-size/--num-layers/--stem: {e}") from None


def load_model(model_path=None, pretrained=None):
    """A model to predict with or look into, in eval mode, and a label naming it -> (model, label): the checkpoint of
    train.py at model_path (predict.py's --model); or with pretrained=True torchvision's ImageNet vit_b_16; or the
    file at pretrained=PATH: a checkpoint (as train.py's --pretrained RUN.pt takes it) or a state dict, built as the
    Table 1 model of its shapes (a copy of torchvision's brings ImageNet's classes). Its model.classes may be None."""
    if model_path:
        return model_from_checkpoint(model_path).eval(), model_path
    source = open_weights(pretrained)  # the file read once
    if source.checkpoint is not None:
        return model_from_checkpoint(source.checkpoint).eval(), pretrained
    flags, head = source.flags, source.state_dict.get("head.weight")
    if head is not None:  # the weights' own head, classes and all
        flags["num_classes"] = len(head)
    try:
        model = build_model(flags.pop("model", "vit_b_16"), pretrained=source, **flags)
    except ValueError as e:
        raise UserError(f"{pretrained}: {e}") from None
    label = "vit_b_16 (torchvision ImageNet weights)" if pretrained is True else pretrained
    return model.eval(), label


def git_commit():
    """The project's current git commit, recorded in checkpoints; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None
