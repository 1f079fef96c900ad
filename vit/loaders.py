"""A training run's batches, from the image folders: each image decoded once, then one of three paths: augmented per
image in DataLoader workers, per batch on the training device (vit/augment.py), or, with --freeze, not at all (the
frozen backbone's features of every image, computed once). Test images are preprocessed once in every path."""
import time

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from vit import augment, data
from vit.distributed import gather_shares, log, master_first
from vit.errors import UserError


def decode_splits(splits, preprocess, cache_dir):
    """{"train": Decoded, "test": Decoded} of `splits` (data.find_splits), shorter sides resized as `preprocess` (the
    model's) says, rank 0 first: it decodes and fills the cache, the others then read it. Says what each split
    holds."""
    with master_first():
        decoded = {split: data.load_split(d, splits.classes, preprocess, cache_dir)
                   for split, d in (("train", splits.train_dir), ("test", splits.test_dir))}
    for (split, dec), folder in zip(decoded.items(), (splits.train_dir, splits.test_dir)):
        notes = "".join(f"; {note}" for note in ("read from the cache" if dec.cached else "", dec.non_images) if note)
        log(f"data: {split}: {len(dec.images)} images in {len(splits.classes)} classes from {folder}{notes}")
        for path, reason in dec.skipped:
            log(f"  skipped unreadable image {path}: {reason}")
    return decoded


@torch.no_grad()
def features(model, images, normalise, batch_size, workers, device, autocast):
    """Backbone features of every (uint8 evaluation crop, label) of `images`, computed once, for --freeze."""
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(images, batch_size=batch_size, num_workers=workers):
        with autocast():
            feats.append(model.forward_features(normalise(x.to(device))).float().cpu())
        labels.append(y)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def augment_on_device(decoded, mode, device):
    """Whether --augment `mode` augments whole batches on the device (device; auto: on CUDA), given that the decoded
    training images must fit there: if not, an error for `device`, a note and per-image augmentation for auto."""
    on_device = mode == "device" or mode == "auto" and device.type == "cuda"
    why = on_device and augment.too_large(decoded, device)
    if why and mode == "device":
        raise UserError(f"--augment device: {why}; crop or remove those images, or use --augment workers")
    if why:
        log(f"augment: {why}; per image instead")
        return False
    return on_device


def make_loaders(decoded, model, args, generator, device, world, rank, autocast, workers_given=False):
    """(training batches, test batches, what prepares a test batch for the model, the DistributedSampler to set every
    epoch or None) from train.py's settings `args`; the training order draws from `generator`, and this process
    (`rank` of `world`) takes its share of the training batches and of the test images."""
    pre, per_process, pin_memory = model.preprocess, args.batch_size // world, device.type == "cuda"
    train_set = data.ImageDataset(decoded["train"], data.train_transform(model.image_size, pre["mean"], pre["std"],
                                                                         trivial_augment=args.trivial_augment))
    # evaluation preprocessing is the same every epoch: done once, kept as uint8 crops, normalised per batch
    test_set = data.eval_images(decoded["test"], pre, range(rank, len(decoded["test"].images), world), args.workers)
    normalise = data.eval_normalise(pre)
    if args.freeze:  # the frozen backbone sees every image once; epochs then train the head on the features
        t0, n = time.perf_counter(), len(decoded["train"].images)
        crops = data.ImageDataset(decoded["train"], data.eval_transform(pre, normalise=False))  # streamed, not kept
        mine = features(model, Subset(crops, range(rank, n, world)), normalise, 2 * args.batch_size, args.workers,
                        device, autocast)  # each process its share of the training images, then everyone's
        train_set = TensorDataset(*(gather_shares(t, n) for t in mine.tensors))
        test_set = features(model, test_set, normalise, 2 * args.batch_size, args.workers, device, autocast)
        normalise = torch.nn.Identity()  # the test set holds features now
        share = f", each of the {world} processes its share" if world > 1 else ""
        log(f"features: {n + len(decoded['test'].images)} images through the frozen backbone once{share}, "
            f"in {time.perf_counter() - t0:.1f}s")
    sampler = None
    if not args.freeze and augment_on_device(decoded["train"], args.augment, device):  # images stay on the device
        batch_augment = augment.BatchAugment(model.image_size, pre["mean"], pre["std"],
                                             trivial_augment=args.trivial_augment).to(device)
        train_loader = augment.DeviceLoader(decoded["train"], batch_augment, per_process, device, generator, world,
                                            rank)
        idle = "; --workers only prepares the test images" if workers_given else ""  # no per-image work left
        log(f"augment: whole batches on {device} (vit/augment.py){idle}")
    else:  # per image, in the DataLoader's workers (features: in this process, nothing to augment)
        sampler = DistributedSampler(train_set, world, rank, seed=args.seed) if world > 1 else None
        order = sampler or RandomSampler(train_set, generator=generator)
        train_loader = data.train_loader(train_set, per_process, order, generator, 0 if args.freeze else args.workers,
                                         pin_memory)
    test_loader = DataLoader(test_set, batch_size=2 * args.batch_size, pin_memory=pin_memory)
    return train_loader, test_loader, normalise, sampler
