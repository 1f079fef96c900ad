"""Train a Vision Transformer on an image folder (ROOT/train/<class>/*, ROOT/test/<class>/*).

    python train.py                                       # a small ViT from scratch on the bundled fashion set
    python train.py --data my_photos                      # from scratch, the recipe chosen from the images' size
    python train.py --data my_photos --pretrained         # fine-tune torchvision's ImageNet ViT-B/16
    python train.py --data my_photos --pretrained --freeze          # linear probe: a new head on frozen features
    python train.py --data my_photos --pretrained models/RUN.pt     # transfer from a run of ours
    python train.py --resume models/RUN.pt                # continue an interrupted run
    torchrun --nproc_per_node=2 train.py ...              # data-parallel on 2 processes (DDP)

A flag left out takes the value of the run's recipe, shown in brackets below; every flag given wins.

Writes models/RUN.pt (every epoch), models/RUN-best.pt (best test accuracy), results/RUN/metrics.json,
results/RUN/curves.png and results/RUN/confusion_matrix.png.
"""
from vit.errors import interrupt_quietly
from vit.threads import share_cores

if __name__ == "__main__":  # first: Ctrl-C while torch imports (seconds) is one line, not a traceback
    interrupt_quietly()
    share_cores()  # OpenMP threads that sleep soon when they wait (vit/threads.py)

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from vit import plots
from vit.cache import CACHE_DIR
from vit.checkpoint import (CheckpointWriter, check_run_files, git_commit, open_run, restore_training, run_files,
                            start_model, training_checkpoint)
from vit.device import mixed_precision, pick_device
from vit.distributed import all_reduce, data_parallel, init_processes, is_master, log, own_share, share_buffers
from vit.errors import UserError, bounded, file_name, nonempty, printable_output
from vit.files import make_folders, write_text
from vit.folders import DATASETS, dataset_folder, find_splits, resolve_data, typical_size
from vit.loaders import decode_splits, make_loaders, seed_epoch
from vit.metrics import evaluate
from vit.model import list_models
from vit.optim import adamw_warmup_cosine
from vit.settings import MOVABLE, RESUMABLE, describe, flags, new_settings, resumed_settings
from vit.threads import CpuShare, busy_note
from vit.transforms import mixing
from vit.weights import open_weights

# -----------------------------------------------------------------------------
# Recipes: every flag left out takes its value from the recipe that fits the run (choose_recipe).
SCRATCH = dict(  # a small ViT from random weights on small images (the bundled 28 px fashion set)
    model="vit_ti_16",      # DeiT-Tiny widths (192 dim, 3 heads, 12 layers)
    num_layers=None,        # None: the model's own (vit_ti_16's 12)
    image_size=32,          # the bundled fashion images are 28 px
    patch_size=8,           # 4x4 patches: patch 4 (8x8) learns more per epoch but runs 4x slower on a CPU
    stem="conv",            # Sec. 3.1's hybrid (patches of a small CNN's feature map); "patch": the plain ViT
    epochs=25,
    batch_size=64,
    lr=3e-4,                # AdamW peak learning rate (1e-3 stays at chance for 90 epochs on 225 photos)
    weight_decay=0.05,
    warmup_epochs=5,        # linear warmup, then cosine decay to 0 (stepped every iteration)
    label_smoothing=0.1,
    drop_path=0.1,          # stochastic depth of the last block (grows linearly with depth)
    trivial_augment=0.0,    # share of images given a TrivialAugment op (1.0 cost 0.04 accuracy on 225 photos)
    mixup=1.0,              # probability of Mixup or CutMix per batch
    clip_grad=1.0,          # max gradient norm (0: no clipping)
)
PHOTO_SIDE = 64  # training images whose median shorter side is at least this many pixels are photos
PHOTOS = dict(SCRATCH,  # from random weights on a folder of photos (docs/from-scratch.md)
    image_size=64, patch_size=8, num_layers=6, batch_size=32,
    epochs=80)              # for up to PHOTO_IMAGES photos; a larger folder gets as many steps in fewer epochs
PHOTO_IMAGES = 1000
FINETUNE = dict(SCRATCH,  # all weights, starting from pretrained ones (--pretrained)
    model="vit_b_16", image_size=None, patch_size=None, stem="patch",  # None: the weights' own sizes
    epochs=10, batch_size=32, lr=1e-4, warmup_epochs=1, mixup=0.0, trivial_augment=1.0)
TRANSFER = dict(PHOTOS,  # all weights, from a checkpoint of a run from scratch here (--pretrained models/RUN.pt)
    image_size=None, patch_size=None, num_layers=None, stem=None,  # None: the checkpoint's own
    lr=1e-4)                # a third of the photo recipe's (docs/transfer.md); epochs as PHOTOS'
LINEAR_PROBE = dict(FINETUNE,  # the new head only, on frozen pretrained features (--pretrained --freeze)
    epochs=20, lr=3e-3, weight_decay=0.0, drop_path=0.0, trivial_augment=0.0)  # (images pass the backbone once)
RECIPES = {"small images": SCRATCH, "photos": PHOTOS, "fine-tune": FINETUNE, "fine-tune ours": TRANSFER,
           "--freeze": LINEAR_PROBE}
# -----------------------------------------------------------------------------


def recipe_defaults(key):
    """What --help shows as a recipe flag's default, e.g. 'small images 25, photos 80 (fewer beyond 1000 ...), ...'."""
    values = {name: r[key] if r[key] is not None else "the model's" if r is SCRATCH else "the weights'"
              for name, r in RECIPES.items()}
    if key == "epochs":
        values["photos"] = values["fine-tune ours"] = f"{PHOTOS['epochs']} (fewer beyond {PHOTO_IMAGES} photos)"
    if len(set(values.values())) == 1:
        return str(values["small images"])
    return ", ".join(f"{name} {value}" for name, value in values.items())


def photo_epochs(n):
    """PHOTOS' epochs for n training photos: its own up to PHOTO_IMAGES, then as many steps in fewer epochs."""
    return max(1, round(PHOTOS["epochs"] * min(1, PHOTO_IMAGES / max(n, 1))))


def choose_recipe(given, splits, source):
    """(the recipe for the flags left out, a line saying which and why): a linear probe with --pretrained --freeze;
    with --pretrained, TRANSFER for a checkpoint of a run from scratch here (source.from_scratch), else FINETUNE; from
    random weights, PHOTOS or SCRATCH as the training images' size asks (typical_size). Photos and transfer take
    photo_epochs of the training images."""
    if given.get("freeze"):
        return LINEAR_PROBE, "--freeze (--pretrained --freeze)"
    if source and not source.from_scratch:
        return FINETUNE, "fine-tune (--pretrained)"
    n, side = typical_size(splits.train_dir, splits.classes)
    if source:
        epochs = photo_epochs(n)
        return dict(TRANSFER, epochs=epochs), (f"fine-tune ours (--pretrained {source.source}, a run from scratch): "
                                               f"{epochs} epochs for {n} images")
    if side < PHOTO_SIDE:
        return SCRATCH, f"small images (the training images' median shorter side is {side} px, under {PHOTO_SIDE})"
    recipe = dict(PHOTOS, epochs=photo_epochs(n))
    return recipe, (f"photos (the training images' median shorter side is {side} px): {recipe['image_size']} px, "
                    f"{recipe['patch_size']} px patches, {recipe['num_layers']} layers, {recipe['epochs']} epochs "
                    f"for {n} images")


def resume_cli(world, last):
    """The command that resumes the run saved in `last`, as a user types it in this folder: torchrun first where the
    run used it, train.py by its path when it is not here, every argument shell-quoted."""
    script = Path(__file__).resolve()
    here = script.parent == Path.cwd().resolve()
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    return " ".join([launcher, *map(shlex.quote, ["train.py" if here else str(script), "--resume", str(last)])])


def parse_args(argv=None):
    """The flags given on the command line, as a dict (a flag left out is absent: its value comes from the recipe or
    vit.settings.Settings, which --help shows in brackets)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    d = recipe_defaults
    count, share, amount = bounded(int, 1), bounded(float, 0, 1), bounded(float, 0)  # the flags' types and ranges
    p.add_argument("--data", type=nonempty, metavar="ROOT", help=f"dataset folder, or a known name, downloaded once "
                   f"into data/ ({', '.join(DATASETS)}); default: the bundled fashion set")
    p.add_argument("--model", choices=list_models(), metavar="NAME", help=f"{', '.join(list_models())} ({d('model')})")
    p.add_argument("--pretrained", nargs="?", const=True, metavar="PATH",
                   help="start from torchvision's ImageNet weights (downloaded), or from PATH: a copy of their file, "
                   "or a checkpoint of ours (models/RUN.pt), whose model is built (none: from scratch)")
    p.add_argument("--freeze", action="store_true", help="train only a new head on frozen pretrained features (off)")
    p.add_argument("--image-size", type=count, metavar="N", help=f"input size in pixels ({d('image_size')})")
    p.add_argument("--patch-size", type=count, metavar="N", help=f"override the model's patch size ({d('patch_size')})")
    p.add_argument("--num-layers", type=count, metavar="N", help=f"override the model's depth ({d('num_layers')})")
    p.add_argument("--stem", choices=("patch", "conv"),
                   help=f"patch: the paper's linear patch embedding; conv: its hybrid, a small CNN first ({d('stem')})")
    p.add_argument("--epochs", type=count, metavar="N", help=f"total epochs ({d('epochs')})")
    p.add_argument("--batch-size", type=count, metavar="N", help=f"images per step, all processes ({d('batch_size')})")
    p.add_argument("--lr", type=amount, metavar="F", help=f"peak learning rate ({d('lr')})")
    p.add_argument("--weight-decay", type=amount, metavar="F", help=f"AdamW weight decay ({d('weight_decay')})")
    p.add_argument("--warmup-epochs", type=amount, metavar="F", help=f"linear warmup ({d('warmup_epochs')})")
    p.add_argument("--label-smoothing", type=share, metavar="F", help=f"label smoothing ({d('label_smoothing')})")
    p.add_argument("--drop-path", type=bounded(float, 0, 1, below=True), metavar="F",
                   help=f"stochastic depth rate ({d('drop_path')})")
    p.add_argument("--mixup", type=share, metavar="P", help=f"Mixup/CutMix probability per batch ({d('mixup')})")
    p.add_argument("--trivial-augment", type=share, metavar="P",
                   help=f"probability of a TrivialAugment op per training image ({d('trivial_augment')})")
    p.add_argument("--clip-grad", type=amount, metavar="F", help=f"max gradient norm, 0: none ({d('clip_grad')})")
    p.add_argument("--seed", type=bounded(int, -2**63, 2**63 - 1), metavar="N", help="random seed (0)")
    p.add_argument("--device", metavar="DEV", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (auto)")
    p.add_argument("--threads", type=count, metavar="N",
                   help="CPU threads for the model's operators (default: PyTorch's, one per core); 1 for each of "
                        "two runs that share the cores")
    p.add_argument("--workers", type=bounded(int, 0), metavar="N",
                   help="data loader processes that augment each image (default: 0 on a CPU, min(8, cores) on a "
                        "GPU); with batches augmented on the device they only prepare the test images")
    p.add_argument("--augment", choices=("auto", "workers", "device"),
                   help="augment each image in the DataLoader workers, or whole batches on the training device "
                        "(vit/augment.py); auto: device on CUDA, workers elsewhere (auto)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere; bf16: also on a CPU (faster where it has native "
                        "bf16, e.g. AVX512-BF16); fp32: full precision everywhere (auto)")
    p.add_argument("--compile", nargs="?", const="default", choices=("default", "reduce-overhead"),
                   metavar="MODE", help="torch.compile the model, in its mode MODE (default; reduce-overhead: CUDA "
                   "graphs, for small models that wait on kernel launches); for GPUs: on a CPU it compiles for "
                   "minutes to gain a few percent (off)")
    p.add_argument("--name", type=file_name, metavar="RUN", help="run name (default: MODEL-DATASET-TIMESTAMP)")
    p.add_argument("--out-dir", type=nonempty, metavar="DIR", help="where models/ and results/ go (.)")
    p.add_argument("--cache-dir", type=nonempty, metavar="DIR", help="decoded-image cache (data/.cache)")
    p.add_argument("--resume", type=nonempty, metavar="CHECKPOINT",
                   help="continue the run saved in models/RUN.pt, with its settings; "
                   f"only {flags(RESUMABLE)} may change (given again), and {flags(MOVABLE)} where they have moved "
                   "(none: a new run)")
    p.add_argument("--stop-after", type=count, metavar="N",
                   help="stop after N epochs of this session, to resume later (none: all epochs)")
    return vars(p.parse_args(argv))


# -----------------------------------------------------------------------------
# The run's settings (vit.settings), built once, and the model it starts from


def start_run(given):
    """What a run starts from, each file opened once: its settings (a new run's, or those of the run that --resume
    continues), the checkpoint of --resume, the model (vit.checkpoint.start_model: the run's own, random weights, or
    the weights of --pretrained) and the data's splits -> (settings, checkpoint or None, model, splits); model and
    splits are None when a resumed run has finished. The settings are printed once; a new run may not overwrite
    another's files (check_run_files)."""
    settings, ckpt, source, splits = resumed_run(given) if "resume" in given else new_run(given)
    if splits is None:
        return settings, ckpt, None, None
    log(describe(settings))
    last, best, _ = run_files(settings.out_dir, settings.name)
    check_run_files(last, best, given.get("resume"))
    return settings, ckpt, start_model(settings, splits.names, ckpt, source), splits  # the weights: in the model


def new_run(given):
    """start_run's settings, weights and splits for a new run: the recipe that fits it (choose_recipe), the flags
    given over it."""
    if given.get("freeze") and not given.get("pretrained"):
        raise UserError("--freeze trains only the head on pretrained features; add --pretrained [PATH]")
    root = resolve_data(given.get("data"))
    splits = find_splits(root)
    pretrained = given.get("pretrained")
    source = open_weights(pretrained, given.get("model", FINETUNE["model"])) if pretrained else None
    folders = folders_of(given, root)
    recipe, why = choose_recipe(given, splits, source)
    own = source.flags if isinstance(pretrained, str) else {}  # the model the weights are for (their shapes show it)
    settings = new_settings(recipe, {**given, **folders}, own, source and source.image_size)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    settings = replace(settings, name=settings.name or f"{settings.model}-{root.resolve().name}-{stamp}")
    log(f"recipe: {why}; a flag given overrides it (python train.py --help)")
    unused = [k for k in ("mixup", "trivial_augment", "drop_path", "augment") if k in given] if settings.freeze else []
    if unused:
        log(f"ignored with --freeze: {flags(unused)} (the frozen backbone sees each image once, unaugmented)")
    return settings, None, source, splits


def folders_of(given, root=None):
    """The folders of --data (its folder, resolved: a run resumes from anywhere; `root`, a new run's, downloaded
    where it is a known name) and --cache-dir, resolved, where given (a new run: always)."""
    out = {"data": str(Path(root or dataset_folder(given["data"])).resolve())} if root or "data" in given else {}
    if root or "cache_dir" in given:
        out["cache_dir"] = str(Path(given.get("cache_dir", CACHE_DIR)).resolve())
    return out


def resumed_run(given):
    """start_run's settings, checkpoint and splits for --resume: the run's own settings
    (vit.settings.resumed_settings), its images checked."""
    ckpt, saved = open_run(given["resume"])
    settings, ignored = resumed_settings(saved, {**given, **folders_of(given)}, given["resume"])
    if ignored:
        log(f"ignored with --resume: {flags(ignored)} (a resumed run keeps the settings it started with)")
    if ckpt["epoch"] >= settings.epochs:
        log(f"{given['resume']}: the run finished all {settings.epochs} epochs, nothing to resume; for more epochs "
            "start a new run (--epochs N --name NEW)")
        return settings, ckpt, None, None
    if not Path(settings.data).is_dir():
        raise UserError(f"{settings.data}: the run's images are no longer there; if they have moved, resume with "
                        f"--resume {shlex.quote(given['resume'])} --data NEW_FOLDER")
    splits = find_splits(settings.data)
    if list(ckpt["classes"]) != splits.names:
        raise UserError(f"{settings.data}: classes {splits.names} differ from the checkpoint's {ckpt['classes']}; "
                        "resume with the data the run was trained on")
    return settings, ckpt, None, splits


# -----------------------------------------------------------------------------
# Training


@dataclass
class Trainer:
    """What a training step uses: the network (compiled, and under torchrun in DDP), its optimiser, schedule and
    gradient scaler, the batches' mixing, the device and its precision, and the loss's settings; the test pass runs
    `tested`, the network outside DDP."""
    net: torch.nn.Module
    tested: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    mix: object  # Mixup/CutMix (vit.transforms.mixing), or None
    device: torch.device
    autocast: object
    label_smoothing: float = 0.0
    clip_grad: float = 0.0

    def objects(self):
        """The objects whose state a checkpoint saves and --resume restores (vit.checkpoint.OPTIMISATION)."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}


def make_trainer(model, settings, steps, device, autocast, scaler):
    """The Trainer of `model` (the head alone with --freeze) for `steps` batches an epoch."""
    trained = model.head if settings.freeze else model
    if settings.freeze:
        model.requires_grad_(False)
        trained.requires_grad_(True)
    fast = torch.compile(trained, mode=settings.compile) if settings.compile else trained
    optimizer, scheduler = adamw_warmup_cosine(trained, settings.lr, settings.weight_decay,
                                               round(settings.warmup_epochs * steps), settings.epochs * steps,
                                               fused=device.type == "cuda")
    mix = mixing(len(model.classes), p=settings.mixup) if settings.mixup > 0 and not settings.freeze else None
    return Trainer(data_parallel(fast, device), fast, optimizer, scheduler, scaler, mix, device, autocast,
                   settings.label_smoothing, settings.clip_grad)


def train_epoch(trainer, loader, desc, own=math.inf):
    """One pass over the training data; returns (mean loss, accuracy) over all processes' samples, each counted once:
    a process counts the `own` first of its share (vit.distributed.own_share), the rest being padding."""
    t = trainer
    t.net.train()
    totals = torch.zeros(3, device=t.device)  # summed loss, correct predictions, samples
    params = [p for p in t.net.parameters() if p.requires_grad]
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not is_master(), dynamic_ncols=True):
        x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        x, target = t.mix(x, y) if t.mix else (x, y)
        with t.autocast():
            logits = t.net(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=t.label_smoothing)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        if t.clip_grad > 0:
            t.scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(params, t.clip_grad)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.scheduler.step()
        # with Mixup/CutMix, accuracy is measured against the unmixed labels; the repeats that pad a share (at its
        # end) are trained on but not counted, so the figures count each image once
        n = min(len(y), own)
        own -= n
        with torch.no_grad():
            totals[0] += loss * n if n == len(y) else F.cross_entropy(
                logits[:n].float(), target[:n], label_smoothing=t.label_smoothing, reduction="sum")
        totals[1] += (logits[:n].argmax(1) == y[:n]).sum()
        totals[2] += n
    loss_sum, correct, count = all_reduce(totals).tolist()
    return loss_sum / count, correct / count


def check_finite(epoch, losses, last, lr):
    """Stop a run whose training or test loss is not finite, naming the last good checkpoint."""
    for split, loss in losses.items():
        if not math.isfinite(loss):
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
            raise UserError(f"epoch {epoch}: {split} loss is {loss}; the run diverged, lower --lr (was {lr:g}) or "
                            f"lengthen --warmup-epochs; {kept}")


def train(settings, ckpt, model, splits):
    """The training procedure, from what the run starts from (start_run): processes, data, optimiser, then the
    epochs (run_epochs)."""
    last, best, results = run_files(settings.out_dir, settings.name)
    device, world, rank = init_processes(pick_device(settings.device))
    if settings.batch_size % world:
        raise UserError(f"--batch-size {settings.batch_size} is not divisible by the {world} processes")
    trained_in = ckpt.get("world_size", world) if ckpt else world  # older checkpoints do not say: no note
    if trained_in != world:  # each process deals its own share of the data: another number, another order
        log(f"note: the run trained in {trained_in} process{'es' * (trained_in > 1)}, this session in {world}: the "
            f"data order, and so the results, differ from an uninterrupted run's (the same order: "
            f"{resume_cli(trained_in, last)})")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    autocast, scaler = mixed_precision(device, settings.precision)
    make_folders(last.parent, results)  # after every check of the flags, before the long work: decoding, training
    model.to(device)
    decoded = decode_splits(splits, model.preprocess, settings.cache_dir)
    generator = torch.Generator()  # the training order's random numbers, seeded every epoch (seed_epoch)
    loaders = make_loaders(decoded, model, settings, generator, (device, world, rank), autocast)
    trainer = make_trainer(model, settings, len(loaders[0]), device, autocast, scaler)
    progress = restore_training(ckpt, trainer.objects()) if ckpt else ([], -1.0, 0)
    if settings.warmup_epochs > settings.epochs:
        log(f"note: --warmup-epochs {settings.warmup_epochs:g} spans the whole run (--epochs {settings.epochs}): the "
            f"learning rate never reaches --lr {settings.lr:g}; shorten it (--warmup-epochs) for a short run")
    n_params = sum(p.numel() for p in model.parameters())
    start = f"pretrained {getattr(model, 'weights_from', settings.pretrained)}" if settings.pretrained else \
        "from scratch"
    log(f"model: {settings.model} {model.image_size}px patch {model.patch_size}, {n_params / 1e6:.2f}M parameters, "
        f"{start}, training {'the head only' if settings.freeze else 'all weights'}")
    processes = f" x {world} processes" if world > 1 else ""
    log(f"run: {settings.name} on {device}{processes}, epochs {progress[2] + 1}..{settings.epochs}, writing {last} "
        f"and {results}/")
    own = own_share(len(decoded["train"].images), world, rank)  # the training images this process counts
    return run_epochs(settings, model, trainer, loaders, progress, own, world, rank, generator)


def run_epochs(settings, model, trainer, loaders, progress, own, world, rank, generator):
    """Train and test epoch by epoch, saving a checkpoint after each (in the background) and the metrics; Ctrl-C saves
    the last finished epoch and says how to go on."""
    train_loader, test_loader, normalise, sampler = loaders
    metrics, best_acc, start = progress
    last, best, results = run_files(settings.out_dir, settings.name)
    end = settings.epochs if settings.stop_after is None else min(settings.epochs, start + settings.stop_after)
    matrix, saved, commit = None, start, git_commit()  # the latest test pass's confusion matrix; the last epoch saved
    writer, shared = CheckpointWriter(), trainer.device.type != "cpu"  # shared: whether the busy note was said
    try:
        for epoch in range(start, end):
            t0, cpu = time.perf_counter(), CpuShare()
            seed_epoch(settings.seed, epoch, rank, generator, sampler)
            lr = trainer.optimizer.param_groups[0]["lr"]
            train_loss, train_acc = train_epoch(trainer, train_loader, f"epoch {epoch + 1}/{settings.epochs}", own)
            share_buffers(model)
            test_loss, test_acc, matrix = evaluate(trainer.tested, test_loader, normalise, len(model.classes),
                                                   trainer.device, trainer.autocast)
            check_finite(epoch + 1, {"training": train_loss, "test": test_loss}, last, settings.lr)
            metrics.append(dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                                test_acc=test_acc, lr=lr, seconds=time.perf_counter() - t0))
            is_best, best_acc = test_acc > best_acc, max(best_acc, test_acc)
            log(f"epoch {epoch + 1}/{settings.epochs} | train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"test loss {test_loss:.4f} acc {test_acc:.4f}{' (best)' if is_best else ''} | "
                f"lr {lr:.2e} | {metrics[-1]['seconds']:.1f}s")
            note = busy_note(cpu.others(), metrics[-1]["seconds"], torch.get_num_threads(), epoch + 1)
            if note and not shared:
                log(note)
                shared = True
            if is_master():
                ckpt = training_checkpoint(model, trainer.objects(), dict(epoch=epoch + 1, metrics=metrics,
                                           best_acc=best_acc), settings, commit, world)
                writer.save(ckpt, *([last, best] if is_best else [last]))
                saved = epoch + 1  # on disk once the writer is closed
                write_text(results / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    except KeyboardInterrupt:
        writer.close()
        done = f"epoch {saved} is saved in {last}; continue with: {resume_cli(world, last)}"
        log(f"\ninterrupted: {done if last.exists() else 'no epoch finished, nothing was saved'}")
        raise SystemExit(130)
    finally:  # files once per session (also after an interruption or a divergence), from the epochs so far
        writer.close()
        if is_master() and metrics:
            plots.plot_run(metrics, matrix, model.classes, results)
    if end < settings.epochs:
        log(f"stopped after epoch {end} of {settings.epochs}; continue with: {resume_cli(world, last)}")
    elif metrics:
        log(f"done: best test accuracy {best_acc:.4f}; checkpoints {last} and {best}, results in {results}/")
    return metrics


def main(argv=None):
    """Command-line entry: user errors become one 'error: ...' line and exit status 2."""
    printable_output()
    given = parse_args(argv)
    try:
        settings, ckpt, model, splits = start_run(given)
        if splits is None:  # a resumed run that had finished
            return list(ckpt["metrics"])
        return train(settings, ckpt, model, splits)
    except UserError as e:
        if is_master():  # under torchrun every process finds the same mistake: said once
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except KeyboardInterrupt:  # before the epochs (decoding, start-up); during them train() saves and says so
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
