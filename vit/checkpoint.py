"""Checkpoints that hold everything needed to rebuild, evaluate and resume a model (as nanoGPT's do)."""
import argparse
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from vit.errors import UserError
from vit.files import replace_atomically
from vit.model import SHAPE_FLAGS, VisionTransformer, build_model
from vit.weights import CHECKPOINT_FORMAT, from_torchvision, is_checkpoint, safe_load, table1_flags


def save_checkpoint(obj, path):
    """torch.save, written atomically (replace_atomically). Through a Python file object: given a file name,
    torch.save holds the GIL for 0.2-0.3 s as it opens and again as it closes the file, which stalls the training
    loop while CheckpointWriter's thread writes (bench/checkpoint.py), and reports a full disk as a RuntimeError
    that names no cause; a file object's OSError becomes replace_atomically's one-line message."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    replace_atomically(path, write)


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
                        save_checkpoint(copy, path)
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


def pretrained_flags(path):
    """(train.py's model flags (model, patch_size, num_layers, stem) for the weights in `path`, so that --pretrained
    PATH builds their model: a checkpoint's own, else the Table 1 model of a state dict's shapes, or {}; whether they
    are a checkpoint of a train.py run from random weights, whose transfer has a recipe of its own)."""
    try:  # mapped, not read: build_model loads the weights next (and names what is wrong with a bad file)
        obj = safe_load(path, mmap=True)
    except UserError:
        return {}, False
    run = obj.get("args") if is_checkpoint(obj) else None
    return flags_of(obj), isinstance(run, dict) and not run.get("pretrained")


def flags_of(obj):
    """The model flags of pretrained_flags for a file already loaded (safe_load)."""
    if not is_checkpoint(obj):
        return table1_flags(from_torchvision(obj) if isinstance(obj, dict) and "conv_proj.weight" in obj else obj)
    model = obj.get("model")
    if not isinstance(model, dict) or not model.get("name") or not isinstance(model.get("config"), dict):
        return {}
    flags = {k: v for k, v in model["config"].items() if k in SHAPE_FLAGS}
    return {"model": model["name"], **flags}


def model_checkpoint(model):
    """The part of a checkpoint that model_from_checkpoint rebuilds the model from (train.py adds its state)."""
    return {"format": CHECKPOINT_FORMAT, "model": {"name": model.name, "config": model.config},
            "state_dict": model.state_dict(), "classes": model.classes, "preprocess": model.preprocess}


TRAINING_STATE = ("epoch", "optimizer", "scheduler", "scaler", "metrics", "best_acc", "args")  # what --resume reads


def training_checkpoint(model, optimizer, scheduler, scaler, *, epoch, metrics, best_acc, args, commit, world=1):
    """model_checkpoint plus what --resume needs: epochs done, optimiser, schedule, gradient scaler, metrics,
    best test accuracy, the run's arguments, the project's git commit and the number of processes (torchrun's: each
    deals its own share of the data, so the number decides the order)."""
    return {**model_checkpoint(model), "epoch": epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "metrics": metrics, "best_acc": best_acc, "args": vars(args), "git_commit": commit, "world_size": world}


def restore_training(ckpt, optimizer, scheduler, scaler):
    """Load a training_checkpoint's state into optimizer, scheduler and scaler -> (metrics, best_acc, epoch)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    return list(ckpt["metrics"]), ckpt["best_acc"], ckpt["epoch"]


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


def resumed_args(ckpt, args, keep, given=()):
    """The checkpointed run's arguments, except the flags named in `keep`, which come from `args` (this command
    line); files go on being written next to the checkpoint (run_files). Also the flags of `given` (those this
    command line set) that the run does not take, as its own value differs: -> (arguments, names of the ignored
    ones)."""
    saved = {"trivial_augment": 1.0, **ckpt["args"]}  # runs saved before that flag used it on every image
    resumed = argparse.Namespace(**{**saved, **{k: getattr(args, k) for k in keep}, "resume": args.resume})
    resumed.out_dir = str(Path(args.resume).resolve().parent.parent)  # run_files' OUT of OUT/models/RUN.pt
    mine = dict(vars(args))
    if mine.get("data"):  # a path or a dataset name -> the folder, resolved, as train.py saves it
        from vit.data import dataset_folder  # vit.data imports this module
        mine["data"] = str(dataset_folder(mine["data"]).resolve())
    return resumed, [k for k in given if k not in (*keep, "resume") and mine[k] != saved.get(k)]


def resume_settings(ckpt, args, given, resumable, movable):
    """--resume's arguments: the run's own, except the flags of `resumable` (this session's where given; stop_after
    always) and of `movable` that this command line gives (`given`, e.g. the same images in a new folder); refuses
    a run whose images are gone, and a checkpoint without a run's training state -> (arguments, the given flags that
    the run does not take: resumed_args)."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:  # e.g. model_checkpoint's file: a model, but no run to continue
        raise UserError(f"{args.resume}: holds a model but not the training state that --resume continues "
                        f"({', '.join(missing)} missing); start a new run from its weights: "
                        f"--pretrained {quoted(args.resume)}")
    moved = tuple(k for k in movable if k in given)
    changed = tuple(k for k in resumable if k in given or k == "stop_after" or k not in ckpt["args"])
    resumed, ignored = resumed_args(ckpt, args, changed + moved, given)
    if "data" not in moved and not Path(resumed.data).is_dir():
        raise UserError(f"{resumed.data}: the run's images are no longer there; if they have moved, resume with "
                        f"--resume {quoted(args.resume)} --data NEW_FOLDER")
    return resumed, ignored


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


def load_model(model_path=None, pretrained=None):
    """A model to predict with or look into, in eval mode, and a label naming it -> (model, label): the checkpoint of
    train.py at model_path (predict.py's --model); or with pretrained=True torchvision's ImageNet vit_b_16; or the
    file at pretrained=PATH: a checkpoint (as train.py's --pretrained RUN.pt takes it) or a state dict, built as the
    Table 1 model of its shapes (a copy of torchvision's brings ImageNet's classes). Its model.classes may be None."""
    if model_path:
        return model_from_checkpoint(model_path).eval(), model_path
    if pretrained is True:
        return build_model("vit_b_16", pretrained=True).eval(), "vit_b_16 (torchvision ImageNet weights)"
    if is_checkpoint(obj := safe_load(pretrained)):
        return model_from_checkpoint(dict(obj, path=pretrained)).eval(), pretrained
    flags = flags_of(obj)  # from the file as loaded, not read again
    del obj  # build_model reads the file itself: not two copies of the weights at once
    try:
        model = build_model(flags.pop("model", "vit_b_16"), pretrained=pretrained, **flags)
    except ValueError as e:
        raise UserError(f"{pretrained}: {e}") from None
    return model.eval(), pretrained


def git_commit():
    """The project's current git commit, recorded in checkpoints; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None
