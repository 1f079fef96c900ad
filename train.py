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

if __name__ == "__main__":  # first: Ctrl-C while torch imports (seconds) is one line, not a traceback
    interrupt_quietly()

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from vit import data, plots
from vit.checkpoint import (CheckpointWriter, check_run_files, git_commit, load_checkpoint,
                            model_from_checkpoint, pretrained_flags, restore_training, resume_settings, run_files,
                            training_checkpoint)
from vit.device import mixed_precision, pick_device
from vit.distributed import all_reduce, data_parallel, init_processes, is_master, log, own_share, share_buffers
from vit.errors import UserError, bounded, file_name, nonempty, printable_output
from vit.files import make_folders, write_text
from vit.loaders import decode_splits, make_loaders
from vit.metrics import evaluate
from vit.model import SHAPE_FLAGS, build_model, list_models
from vit.optim import adamw_warmup_cosine

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
RESUMABLE = ("device", "workers", "augment", "precision", "compile", "stop_after")  # --resume: the run's unless given
MOVABLE = ("data", "cache_dir")  # --resume: the run's own unless given (images or cache moved)
# -----------------------------------------------------------------------------


def flags(keys):
    """Argument names as typed on the command line: ("cache_dir", "lr") -> '--cache-dir, --lr'."""
    return ", ".join("--" + k.replace("_", "-") for k in keys)


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


def choose_recipe(args, splits, scratch_run):
    """(the recipe for the flags left out, a line saying which and why): a linear probe with --pretrained --freeze;
    with --pretrained, TRANSFER for a checkpoint of a run from scratch here (scratch_run), else FINETUNE; from random
    weights, PHOTOS or SCRATCH as the training images' size asks (data.typical_size). Photos and transfer take
    photo_epochs of the training images."""
    if args.freeze:
        return LINEAR_PROBE, "--freeze (--pretrained --freeze)"
    if args.pretrained and not scratch_run:
        return FINETUNE, "fine-tune (--pretrained)"
    n, side = data.typical_size(splits.train_dir, splits.classes)
    if args.pretrained:
        epochs = photo_epochs(n)
        return dict(TRANSFER, epochs=epochs), (f"fine-tune ours (--pretrained {args.pretrained}, a run from scratch): "
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
    """The command line; recipe flags default to None and are filled in from the recipe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = recipe_defaults
    count, share, amount = bounded(int, 1), bounded(float, 0, 1), bounded(float, 0)  # the flags' types and ranges
    p.add_argument("--data", type=nonempty, metavar="ROOT",
                   help="dataset folder, or a known name (pizza_steak_sushi); default: bundled fashion set")
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
    p.add_argument("--seed", type=bounded(int, -2**63, 2**63 - 1), default=0, metavar="N", help="random seed (0)")
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (auto)")
    p.add_argument("--workers", type=bounded(int, 0), metavar="N",
                   help="data loader processes that augment each image (default: 0 on a CPU, min(8, cores) on a "
                        "GPU); with batches augmented on the device they only prepare the test images")
    p.add_argument("--augment", choices=("auto", "workers", "device"), default="auto",
                   help="augment each image in the DataLoader workers, or whole batches on the training device "
                        "(vit/augment.py); auto: device on CUDA, workers elsewhere (auto)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere; bf16: also on a CPU (faster where it has native "
                        "bf16, e.g. AVX512-BF16); fp32: full precision everywhere (auto)")
    p.add_argument("--compile", nargs="?", const="default", choices=("default", "reduce-overhead"),
                   metavar="MODE", help="torch.compile the model, in its mode MODE (default; reduce-overhead: CUDA "
                   "graphs, for small models that wait on kernel launches); for GPUs: on a CPU it compiles for "
                   "minutes to gain a few percent (off)")
    p.add_argument("--name", type=file_name, metavar="RUN", help="run name (default: MODEL-DATASET-TIMESTAMP)")
    p.add_argument("--out-dir", type=nonempty, default=".", metavar="DIR", help="where models/ and results/ go (.)")
    p.add_argument("--cache-dir", type=nonempty, default=str(data.CACHE_DIR), metavar="DIR",
                   help="decoded-image cache (data/.cache)")
    p.add_argument("--resume", type=nonempty, metavar="CHECKPOINT",
                   help="continue the run saved in models/RUN.pt, with its settings; "
                   f"only {flags(RESUMABLE)} may change (given again), and {flags(MOVABLE)} where they have moved "
                   "(none: a new run)")
    p.add_argument("--stop-after", type=count, metavar="N",
                   help="stop after N epochs of this session, to resume later (none: all epochs)")
    args = p.parse_args(argv)
    args.given = [k for k, v in vars(args).items() if v != p.get_default(k)]  # what --resume must not ignore silently
    return args


def apply_recipe(args, splits, given):
    """Fill in the flags left out from the recipe that fits the run (choose_recipe), then, for --pretrained PATH,
    the model flags of its weights (unless `given`); says which recipe and how to change it."""
    own, scratch_run = pretrained_flags(args.pretrained) if isinstance(args.pretrained, str) else ({}, False)
    recipe, why = choose_recipe(args, splits, scratch_run)
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if own:  # the weights name their model (a checkpoint of ours) or show it (their shapes)
        clash = [k for k, v in own.items() if k in given and getattr(args, k) != v]
        if clash:
            raise UserError(f"{args.pretrained}: weights for {' '.join(f'{flags([k])} {v}' for k, v in own.items())}, "
                            f"not {' '.join(f'{flags([k])} {getattr(args, k)}' for k in clash)}; leave out "
                            f"{flags(clash)}: the model is built from the weights")
        vars(args).update(own)
    log(f"recipe: {why}; a flag given overrides it (python train.py --help)")


def train_epoch(net, loader, optimizer, scheduler, scaler, mix, args, device, autocast, desc, own=math.inf):
    """One pass over the training data; returns (mean loss, accuracy) over all processes' samples, each counted once:
    a process counts the `own` first of its share (vit.distributed.own_share), the rest being padding."""
    net.train()
    totals = torch.zeros(3, device=device)  # summed loss, correct predictions, samples
    params = [p for p in net.parameters() if p.requires_grad]
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not is_master(), dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x, target = mix(x, y) if mix else (x, y)
        with autocast():
            logits = net(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        # with Mixup/CutMix, accuracy is measured against the unmixed labels; the repeats that pad a share (at its
        # end) are trained on but not counted, so the figures count each image once
        n = min(len(y), own)
        own -= n
        with torch.no_grad():
            totals[0] += loss * n if n == len(y) else F.cross_entropy(
                logits[:n].float(), target[:n], label_smoothing=args.label_smoothing, reduction="sum")
        totals[1] += (logits[:n].argmax(1) == y[:n]).sum()
        totals[2] += n
    loss_sum, correct, count = all_reduce(totals).tolist()
    return loss_sum / count, correct / count


def train(args):
    """Set up data, model and optimiser from args, run the epochs, write checkpoints and results."""
    # settings: the recipe's, or a resumed run's own; the data's folders and classes; the run's files
    given = vars(args).pop("given", [])
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt:  # the run's own settings, except the flags that may change between sessions
        args, ignored = resume_settings(ckpt, args, given, RESUMABLE, MOVABLE)
        if ignored:
            log(f"ignored with --resume: {flags(ignored)} (a resumed run keeps the settings it started with)")
        if ckpt["epoch"] >= args.epochs:
            log(f"{args.resume}: the run finished all {args.epochs} epochs, nothing to resume; "
                "for more epochs start a new run (--epochs N --name NEW)")
            return list(ckpt["metrics"])
    if args.freeze and not args.pretrained:
        raise UserError("--freeze trains only the head on pretrained features; add --pretrained [PATH]")
    root = data.resolve_data(args.data)
    splits = data.find_splits(root)
    if ckpt and list(ckpt["classes"]) != splits.classes:
        raise UserError(f"{root}: classes {splits.classes} differ from the checkpoint's {ckpt['classes']}; "
                        "resume with the data the run was trained on")
    if not ckpt:
        apply_recipe(args, splits, given)
    args.data, args.cache_dir = str(root.resolve()), str(Path(args.cache_dir).resolve())  # for --resume from anywhere
    unused = [k for k in ("mixup", "trivial_augment", "drop_path", "augment") if k in given] if args.freeze else []
    if unused:
        log(f"ignored with --freeze: {flags(unused)} (the frozen backbone sees each image once, unaugmented)")
    args.name = args.name or f"{args.model}-{root.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
    last, best, results = run_files(args.out_dir, args.name)
    check_run_files(last, best, args.resume if ckpt else None)

    # processes and device
    device, world, rank = init_processes(pick_device(args.device))
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    trained_in = ckpt.get("world_size", world) if ckpt else world  # older checkpoints do not say: no note
    if trained_in != world:  # each process deals its own share of the data: another number, another order
        same = resume_cli(trained_in, last)
        log(f"note: the run trained in {trained_in} process{'es' * (trained_in > 1)}, this session in {world}: the "
            f"data order, and so the results, differ from an uninterrupted run's (the same order: {same})")
    if args.workers is None:
        args.workers = 0 if device.type == "cpu" else min(8, os.cpu_count())
    autocast, scaler = mixed_precision(device, args.precision)

    # model
    torch.manual_seed(args.seed)
    if ckpt:
        model = model_from_checkpoint(ckpt)
    else:
        overrides = {k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None}
        try:
            model = build_model(args.model, num_classes=len(splits.classes), image_size=args.image_size,
                                pretrained=args.pretrained or False, classes=splits.classes, drop_path=args.drop_path,
                                **overrides)
        except ValueError as e:
            raise UserError(f"--image-size/--patch-size/--num-layers/--stem: {e}") from None
    make_folders(last.parent, results)  # after every check of the flags, before the long work: decoding, training
    model.to(device)
    trained = model.head if args.freeze else model
    if args.freeze:
        model.requires_grad_(False)
        trained.requires_grad_(True)

    # data: decoded once, in threads (shorter side = the eval resize, so eval preprocessing is exact), then augmented
    # per image in DataLoader workers or per batch on the device (vit/augment.py); --freeze: features, computed once
    decoded = decode_splits(splits, model.preprocess, args.cache_dir)
    generator = torch.Generator()  # the training order's random numbers, seeded every epoch (data.seed_epoch)
    train_loader, test_loader, normalise, sampler = make_loaders(decoded, model, args, generator, device, world, rank,
                                                                 autocast, workers_given="workers" in given)
    mix = data.MixupCutmix(len(splits.classes), p=args.mixup) if args.mixup > 0 and not args.freeze else None
    own = own_share(len(decoded["train"].images), world, rank)  # the training images this process counts

    # optimiser and schedule
    fast = torch.compile(trained, mode=args.compile) if args.compile else trained
    net = data_parallel(fast, device)  # under torchrun: DDP, which sums the gradients across processes
    steps = len(train_loader)
    optimizer, scheduler = adamw_warmup_cosine(trained, args.lr, args.weight_decay, round(args.warmup_epochs * steps),
                                               args.epochs * steps, fused=device.type == "cuda")
    metrics, best_acc, start = restore_training(ckpt, optimizer, scheduler, scaler) if ckpt else ([], -1.0, 0)
    if args.warmup_epochs > args.epochs:
        log(f"note: --warmup-epochs {args.warmup_epochs:g} spans the whole run (--epochs {args.epochs}): the learning "
            f"rate never reaches --lr {args.lr:g}; shorten it (--warmup-epochs) for a short run")

    commit = git_commit()  # once per session, not per checkpoint
    n_params = sum(p.numel() for p in model.parameters())
    source = f"pretrained {getattr(model, 'weights_from', args.pretrained)}" if args.pretrained else "from scratch"
    log(f"model: {args.model} {model.image_size}px patch {model.patch_size}, {n_params / 1e6:.2f}M parameters, "
        f"{source}, training {'the head only' if args.freeze else 'all weights'}")
    processes = f" x {world} processes" if world > 1 else ""
    log(f"run: {args.name} on {device}{processes}, epochs {start + 1}..{args.epochs}, writing {last} and {results}/")

    end = args.epochs if args.stop_after is None else min(args.epochs, start + args.stop_after)
    matrix, saved = None, start  # the latest test pass's confusion matrix; the last epoch given to the writer
    resume_command = resume_cli(world, last)
    writer = CheckpointWriter()  # writes in the background while the next epoch trains
    try:
        for epoch in range(start, end):
            t0 = time.perf_counter()
            data.seed_epoch(args.seed, epoch, rank, generator, sampler)
            lr = optimizer.param_groups[0]["lr"]
            train_loss, train_acc = train_epoch(net, train_loader, optimizer, scheduler, scaler, mix, args, device,
                                                autocast, desc=f"epoch {epoch + 1}/{args.epochs}", own=own)
            share_buffers(model)
            test_loss, test_acc, matrix = evaluate(fast, test_loader, normalise, len(splits.classes), device, autocast)
            for split, loss in (("training", train_loss), ("test", test_loss)):  # test: also the epoch's last steps
                if not math.isfinite(loss):
                    writer.close()
                    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
                    raise UserError(f"epoch {epoch + 1}: {split} loss is {loss}; the run diverged, lower --lr "
                                    f"(was {args.lr:g}) or lengthen --warmup-epochs; {kept}")
            metrics.append(dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                                test_acc=test_acc, lr=lr, seconds=time.perf_counter() - t0))
            is_best = test_acc > best_acc
            best_acc = max(best_acc, test_acc)
            log(f"epoch {epoch + 1}/{args.epochs} | train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"test loss {test_loss:.4f} acc {test_acc:.4f}{' (best)' if is_best else ''} | "
                f"lr {lr:.2e} | {metrics[-1]['seconds']:.1f}s")
            if is_master():
                ckpt = training_checkpoint(model, optimizer, scheduler, scaler, epoch=epoch + 1, metrics=metrics,
                                           best_acc=best_acc, args=args, commit=commit, world=world)
                writer.save(ckpt, *([last, best] if is_best else [last]))
                saved = epoch + 1  # on disk once the writer is closed
                write_text(results / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    except KeyboardInterrupt:
        writer.close()
        done = f"epoch {saved} is saved in {last}; continue with: {resume_command}"
        log(f"\ninterrupted: {done if last.exists() else 'no epoch finished, nothing was saved'}")
        raise SystemExit(130)
    finally:  # files once per session (also after an interruption or a divergence), from the epochs so far
        writer.close()
        if is_master() and metrics:
            plots.plot_run(metrics, matrix, splits.classes, results)
    if end < args.epochs:
        log(f"stopped after epoch {end} of {args.epochs}; continue with: {resume_command}")
    elif metrics:
        log(f"done: best test accuracy {best_acc:.4f}; checkpoints {last} and {best}, results in {results}/")
    return metrics


def main(argv=None):
    """Command-line entry: user errors become one 'error: ...' line and exit status 2."""
    printable_output()
    args = parse_args(argv)
    try:
        return train(args)
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
