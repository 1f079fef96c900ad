"""A training run's batches, from the image folders: each image decoded once, then one of three paths: augmented per
image in DataLoader workers, per batch on the training device (vit/augment.py), or, with --freeze, not at all (the
frozen backbone's features of every image, computed once). Test images are preprocessed once in every path."""
import os
import time
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from vit import augment
from vit.cache import load_split, map_parts
from vit.transforms import eval_normalise, eval_transform, train_transform
from vit.distributed import gather_shares, log, master_first
from vit.errors import UserError


def decode_splits(splits, preprocess, cache_dir):
    """{"train": Decoded, "test": Decoded} of `splits` (find_splits), shorter sides resized as `preprocess` (the
    model's) says, rank 0 first: it decodes and fills the cache, the others then read it. Says what each split
    holds."""
    folders = {"train": (splits.train_dir, None), "test": (splits.test_dir, splits.test_files)}
    with master_first():
        decoded = {split: load_split(folder, splits.classes, preprocess, cache_dir, files=files)
                   for split, (folder, files) in folders.items()}
    for split, (folder, _) in folders.items():
        dec = decoded[split]
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


def make_loaders(decoded, model, settings, generator, place, autocast):
    """(training batches, test batches, what prepares a test batch for the model, the DistributedSampler to set every
    epoch or None) from the run's settings (vit.settings); the training order draws from `generator`, and this
    process (`place`: device, rank of world) takes its share of the training batches and of the test images."""
    args, (device, world, rank) = settings, place
    if args.workers is None:  # the device's default
        args = replace(args, workers=0 if device.type == "cpu" else min(8, os.cpu_count()))
    pre, per_process, pin_memory = model.preprocess, args.batch_size // world, device.type == "cuda"
    augmented = train_transform(model.image_size, pre["mean"], pre["std"], trivial_augment=args.trivial_augment)
    # evaluation preprocessing is the same every epoch: done once, kept as uint8 crops, normalised per batch
    crop, normalise = eval_transform(pre, normalise=False), eval_normalise(pre)
    train_set = ImageDataset(decoded["train"], augmented)
    test_set = eval_images(decoded["test"], crop, range(rank, len(decoded["test"].images), world), args.workers)
    if args.freeze:  # the frozen backbone sees every image once; epochs then train the head on the features
        t0, n = time.perf_counter(), len(decoded["train"].images)
        crops = ImageDataset(decoded["train"], crop)  # streamed, not kept
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
        batch_augment = augment.BatchAugment.from_transform(train_set.transform).to(device)  # the same steps
        train_loader = augment.DeviceLoader(decoded["train"], batch_augment, per_process, device, generator, world,
                                            rank)
        idle = "; --workers only prepares the test images" if settings.workers is not None else ""  # nothing else
        log(f"augment: whole batches on {device} (vit/augment.py){idle}")
    else:  # per image, in the DataLoader's workers (features: in this process, nothing to augment)
        sampler = DistributedSampler(train_set, world, rank, seed=args.seed) if world > 1 else None
        order = sampler or RandomSampler(train_set, generator=generator)
        train_loader = shuffled_loader(train_set, per_process, order, generator, 0 if args.freeze else args.workers,
                                         pin_memory)
    test_loader = DataLoader(test_set, batch_size=2 * args.batch_size, pin_memory=pin_memory)
    return train_loader, test_loader, normalise, sampler


class ImageDataset(torch.utils.data.Dataset):
    """Decoded images as a Dataset of (transform(image), label); an index (seed, i) from SeededOrder seeds torch's
    random numbers for image i first."""

    def __init__(self, decoded, transform):
        self.decoded, self.transform = decoded, transform

    def __len__(self):
        return len(self.decoded.images)

    def __getitem__(self, i):
        if isinstance(i, tuple):  # (seed, index) from SeededOrder
            seed, i = i
            torch.manual_seed(seed)
        return self.transform(self.decoded.images[i]), self.decoded.labels[i]

    def __getstate__(self):  # to a spawned worker: the names of the cache files, which it maps, not the images
        return dict(vars(self), decoded=replace(self.decoded, images=None)) if self.decoded.parts else vars(self)

    def __setstate__(self, state):
        vars(self).update(state)
        if self.decoded.images is None:
            self.decoded.images = map_parts(self.decoded.parts)


class SeededOrder(torch.utils.data.Sampler):
    """(seed, index) for each index of a sampler over n images, with a seed per image (not per place: under torchrun
    the ranks' orders share a generator) drawn from `generator` after the order: DataLoader workers then augment each
    image from its own seed, so they can be started once (persistent) and an epoch still depends only on the
    generator (train_loader)."""

    def __init__(self, order, generator, n):
        self.order, self.generator, self.n = order, generator, n

    def __len__(self):
        return len(self.order)

    def __iter__(self):  # drawn when the first index is asked for, as RandomSampler draws its order
        indices = list(self.order)
        seeds = torch.randint(2**62, (self.n,), generator=self.generator).tolist()
        yield from ((seeds[i], i) for i in indices)


def seed_epoch(seed, epoch, rank, generator, sampler=None):
    """Seed an epoch's randomness from (seed, epoch) alone, so that a resumed run repeats it exactly: the process's
    own (dropout, Mixup/CutMix: one stream per rank), the data order's `generator`, and a DistributedSampler's
    shuffle (without set_epoch it repeats epoch 0's order every epoch)."""
    torch.manual_seed(seed + 10_000 * epoch + rank)
    generator.manual_seed(seed + epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)


def shuffled_loader(dataset, batch_size, order, generator, workers, pin_memory):
    """Batches of `dataset` in the order of the sampler `order`. In the process itself as DataLoader(shuffle=True,
    generator=generator) draws them; with workers, those are started once (persistent: under spawn, the start
    method of macOS and Windows, each start imports torch again, seconds an epoch) and seeded per image from
    generator (SeededOrder)."""
    if not workers:
        return torch.utils.data.DataLoader(dataset, batch_size, sampler=order, generator=generator,
                                           pin_memory=pin_memory)
    return torch.utils.data.DataLoader(dataset, batch_size, sampler=SeededOrder(order, generator, len(dataset)),
                                       num_workers=workers, persistent_workers=True, pin_memory=pin_memory,
                                       generator=torch.Generator())  # only for the workers' own seeds: unused


def eval_images(decoded, crop, indices=None, workers=0):
    """TensorDataset of the uint8 (3, S, S) evaluation crops that `crop` makes (eval_transform(preprocess,
    normalise=False)) and the labels, of `indices` (default: all).

    Evaluation preprocessing is the same every epoch, so train.py does it once, not in workers every epoch.
    """
    dataset = ImageDataset(decoded, crop)
    loader = torch.utils.data.DataLoader(dataset if indices is None else torch.utils.data.Subset(dataset, indices),
                                         batch_size=256, num_workers=workers)
    batches = list(loader) or [(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))]
    return torch.utils.data.TensorDataset(*(torch.cat(parts) for parts in zip(*batches)))
