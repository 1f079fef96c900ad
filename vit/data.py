"""Images and datasets: find the train/test folders, decode every image once, augment, mix.

A dataset is a torchvision ImageFolder tree: ROOT/train/<class>/<image> and ROOT/test/<class>/<image>
(`val/` is accepted for `test/`). Images are decoded once into uint8 tensors (shorter side resized),
optionally cached on disk (and then memory-mapped from there), and augmented per sample on the fly.
"""
import glob
import hashlib
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain, repeat
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping
from tqdm import tqdm

from vit.checkpoint import save_checkpoint
from vit.errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # bundled data and downloads live here
CACHE_DIR = DATA_DIR / ".cache"  # decoded images (--cache-dir of train.py and predict.py --evaluate)
DATASETS = {  # names accepted by --data that are downloaded once into data/<name>
    "pizza_steak_sushi": "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi.zip",
}
CACHE_VERSION = 4  # bump when decoding or the cache's layout changes: caches of other versions are never read
CACHE_NAME = re.compile(r"(?:v(\d+)-)?[0-9a-f]{20}(?:-[0-9a-f]{20})?(?:-\d+)?\.pt")  # an index or part of any version
UNCACHED = "; the images will be decoded again next time (or choose --cache-dir)"
STALE = 86_400  # seconds unused after which a cache of a folder's earlier contents is deleted (remove_stale)
PART_BYTES = 2**28  # decoded images per cache part (256 MiB): what decoding holds in memory at once with a cache
NO_IMAGES = f"no images ({' '.join(IMG_EXTENSIONS)}); add images or remove the class folder"
THREADS = min(8, os.cpu_count() or 1)  # decoding threads: Pillow decodes and resizes without holding the GIL
# Pillow's warning for images of 1-2 times its pixel limit names no file: open_rgb says it, naming the file (a filter
# set once here: warnings.catch_warnings around each decode is not thread-safe)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def dataset_folder(arg, data_dir=DATA_DIR):
    """Where --data points, nothing checked or downloaded: None -> the bundled set, a known name -> its folder
    under data_dir (unless a folder of that name is here), else the path."""
    if arg is None:
        return Path(data_dir) / "fashion_mnist_small"
    return Path(data_dir) / arg if arg in DATASETS and not Path(arg).is_dir() else Path(arg)


def resolve_data(arg, data_dir=DATA_DIR):
    """Turn --data into a dataset folder (dataset_folder): a known name is downloaded once, a path must exist."""
    folder = dataset_folder(arg, data_dir)
    if arg in DATASETS:
        return download(DATASETS[arg], folder)
    if not folder.exists():
        raise UserError(f"{arg}: no such folder and not a known dataset name (known: {', '.join(DATASETS)}); "
                        "pass a folder containing train/ and test/, or one of the names")
    return folder


def download(url, dest):
    """Download the zip archive at url and unpack it into dest (atomically), unless dest already exists."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        archive, unpacked = Path(tmp) / "archive.zip", Path(tmp) / "unpacked"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:  # URLError, HTTPError, timeouts, refused connections
            raise UserError(f"{url}: download failed ({getattr(e, 'reason', e)}); check the network, or unpack the "
                            "archive yourself and pass --data /path/to/folder (with train/ and test/)") from None
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        except zipfile.BadZipFile:
            raise UserError(f"{url}: the download is not a zip archive; pass --data /path/to/folder instead") from None
        entries = list(unpacked.iterdir())
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked  # archive with one top folder
        os.replace(top, dest)
    return dest


class Splits(NamedTuple):
    train_dir: Path
    test_dir: Path
    classes: list


def is_image(path):
    """True when the file name has one of torchvision's image extensions and is not hidden (macOS's ._x.jpg)."""
    return path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")


def non_image_note(paths):
    """'skipped N non-image file(s): .gif 2, hidden 1' for those of paths that is_image refuses, or ''."""
    kinds = Counter("hidden" if p.name.startswith(".") else p.suffix.lower() or "no extension"
                    for p in paths if not is_image(p))
    listed = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kind_n: (-kind_n[1], kind_n[0])))
    return f"skipped {sum(kinds.values())} non-image file(s): {listed}" if kinds else ""


def list_files(folder):
    """All files under folder (recursively, into linked folders too, like ImageFolder), sorted; a link to a file
    that is gone too, so that it is named as missing rather than left out. A linked folder that leads back into the
    walk (to a folder above, or one already on the way down: a loop, which ImageFolder goes round 40 times, taking
    other classes' images as this folder's) is not followed."""
    files, way = [], {str(folder): (Path(folder).resolve(),)}  # each folder's resolved way down from `folder`
    for root, folders, names in os.walk(folder, followlinks=True):
        above = way.pop(root)
        kept = [(name, real) for name in folders
                if (real := Path(root, name).resolve()) not in above and not above[-1].is_relative_to(real)]
        folders[:] = [name for name, _ in kept]
        way.update((os.path.join(root, name), (*above, real)) for name, real in kept)
        files += (p for p in (Path(root, name) for name in names) if p.is_file() or p.is_symlink())
    return sorted(files)


def is_listing(arg):
    """Whether an input names several images at once: a folder or a glob pattern."""
    return Path(arg).is_dir() or not Path(arg).exists() and any(c in arg for c in "*?[")  # "photo [1].jpg": a file


def expand_inputs(inputs):
    """Image paths from files, folders (recursively, image files only) and glob patterns, each once; also whether
    any folder or glob was given -> (paths, failures, listing). Folders and globs that match no image are reported as
    failures, the non-image files they hold are counted on stderr; a file is listed unchecked."""
    paths, failures, listing = [], [], False
    for arg in inputs:
        if "://" in arg or arg == "-":
            failures.append(f"{arg}: {'a URL' if arg != '-' else 'standard input'} is not read here; save the image "
                            "to a file and pass its path")
        elif is_listing(arg):
            listing = True
            files = list_files(arg) if Path(arg).is_dir() else sorted(map(Path, glob.glob(arg, recursive=True)))
            files = [p for p in files if not p.is_dir()]  # a link to a missing file is named as missing
            found, skipped = [p for p in files if is_image(p)], non_image_note(files)
            if not found:
                failures.append(f"{arg}: no image files found{f' ({skipped})' if skipped else ''}; "
                                "check the folder or pattern")
            elif skipped:  # as training skips them: a note, not an error
                print(f"{skipped} in {arg}", file=sys.stderr)
            paths += found
        else:
            paths.append(Path(arg))
    unique = {}  # an image named twice (photos/ 'photos/*.jpg', or photo.jpg twice) is predicted once; a link is
    for path in paths:  # a name of its own
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values()), failures, listing


def split_folder(root, *names):
    """The sub-folder of root with the first of names it has, in any case (Train/ too), or None."""
    root = Path(root)
    folders = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
    return next((folders[name] for name in names if name in folders), None)


def class_folders(split_dir):
    """Class names of a split: its sub-folders, sorted like ImageFolder (hidden folders skipped)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_splits(root):
    """Check ROOT/train/<class>/* and ROOT/test/<class>/* (or val/) and return their folders and class names."""
    root = Path(root)
    layout = "expected ROOT/train/<class>/<images> and ROOT/test/<class>/<images>"
    if not root.exists():
        raise UserError(f"{root}: no such folder; pass --data with a folder containing train/ and test/")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; {layout}")
    train_dir, test_dir = split_folder(root, "train"), split_folder(root, "test", "val")
    if train_dir is None:
        if root.name.lower() in ("train", "test", "val") and split_folder(root.parent, "train"):
            raise UserError(f"{root}: one split of a dataset, not its root; pass the folder above it ({root.parent})")
        flat = [name for name in class_folders(root) if name.lower() not in ("test", "val")]
        if len(flat) > 1 and any(is_image(p) for p in list_files(root / flat[0])):  # class folders, but no split
            named = ", ".join(flat[:3]) + (", ..." if len(flat) > 3 else "")
            raise UserError(f"{root}: class folders ({named}) but no train/ and test/; move about a fifth of each "
                            f"class's images to {root / 'test' / '<class>'} and the rest to "
                            f"{root / 'train' / '<class>'}")
        raise UserError(f"{root / 'train'}: missing; {layout}")
    if test_dir is None:
        raise UserError(f"{root / 'test'}: missing (val/ is accepted too); {layout}")
    classes, test_classes = class_folders(train_dir), class_folders(test_dir)
    if classes != test_classes:
        only_train = ", ".join(map(shown, sorted(set(classes) - set(test_classes)))) or "none"
        only_test = ", ".join(map(shown, sorted(set(test_classes) - set(classes)))) or "none"
        raise UserError(f"{root}: train/ and test/ have different class folders (missing in {test_dir.name}/: "
                        f"{only_train}; missing in train/: {only_test}); give both the same class folders")
    if not classes:
        raise UserError(f"{train_dir}: no class folders, so no images; {layout}")
    if len(classes) == 1:  # softmax over one class: loss 0 and accuracy 1 whatever the model, nothing to learn
        raise UserError(f"{train_dir}: one class folder ({classes[0]}); a classifier needs at least two, "
                        "add a folder of images for each other class")
    for split_dir in (train_dir, test_dir):
        for name in classes:
            if not any(is_image(p) for p in list_files(split_dir / name)):
                raise UserError(f"{split_dir / name}: {NO_IMAGES}")
        loose = [p.name for p in sorted(split_dir.iterdir()) if is_image(p) and p.is_file()]
        if loose:
            print(f"warning: {split_dir}: {len(loose)} image(s) outside the class folders are not used ({loose[0]}"
                  f"{', ...' if len(loose) > 1 else ''}); move them into their class's folder", file=sys.stderr)
    return Splits(train_dir, test_dir, classes)


def shown(name):
    """A folder name as messages show it: with escapes where it is not plain ASCII or has edge spaces, so that
    names that differ only there (a trailing space; an accent composed or not) look different."""
    return name if name.isascii() and name == name.strip() else ascii(name)


def to_rgb(image):
    """Convert any Pillow mode to RGB; transparent pixels become white, 16-bit greyscale is scaled to 8 bits, 32-bit
    and float greyscale by their largest value (floats of at most 1 taken as 0-1)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # greyscale of more than 8 bits -> 8 bits
        top = image.getextrema()[1]
        if top > 65535:  # 32-bit integers or large floats: by their largest value
            scale = 255 / top
        elif image.mode != "F" or top > 255:  # 16 bits
            scale = 1 / 256
        else:  # floats of 0-1, or of 0-255
            scale = 255 if top <= 1 else 1
        image = image.convert("F" if image.mode == "F" else "I").point(lambda v: v * scale).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    return image.convert("RGB")


def open_rgb(path):
    """Open an image file as an upright RGB PIL image; UserError naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                print(f"warning: {path}: {image.width} x {image.height} px, over Pillow's limit of "
                      f"{Image.MAX_IMAGE_PIXELS} pixels for images it trusts; decoded (refused from twice that), "
                      "but resizing it would save time", file=sys.stderr)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as e:  # over twice Image.MAX_IMAGE_PIXELS (beyond once, Pillow warns)
        why = str(e).rstrip(".")
        raise UserError(f"{path}: refused as a possible decompression bomb ({why}); if you trust the file, resize it "
                        "(a few thousand pixels a side is plenty)") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; check the path") from None
    except (OSError, SyntaxError, ValueError) as e:  # not an image, truncated, corrupt
        raise UserError(f"{path}: cannot read image ({e}); replace or delete the file") from None


def typical_size(split_dir, classes, sample=64):
    """(number of images, median shorter side in pixels) of a split, the side read from the headers of up to
    `sample` images spread over its classes (unreadable ones left out; 0 when none can be read)."""
    paths = [p for name in classes for p in list_files(Path(split_dir) / name) if is_image(p)]
    sides = []
    for path in paths[::max(1, len(paths) // sample)][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, SyntaxError, ValueError):
            pass
    return len(paths), sorted(sides)[len(sides) // 2] if sides else 0


@dataclass
class Decoded:
    images: list  # uint8 tensors (3, H, W), shorter side == size
    labels: list  # class indices
    paths: list  # file paths as str
    skipped: list = field(default_factory=list)  # (path, reason) of images that could not be decoded
    non_images: str = ""  # non_image_note of the files that are not images, or ""
    cached: bool = False  # read from the cache (not decoded by this call)
    parts: list = field(default_factory=list)  # the cache files holding `images` in order, where all of them are


def decode(path, preprocess):
    """open_rgb, resize so the shorter side is preprocess["resize_size"] (aspect kept), return a uint8 tensor (3, H, W).

    `preprocess` is the model's (model.preprocess; only "resize_size" and "interpolation" are read). The longer side
    is int(size * long / short), truncated as torchvision's Resize computes it (640 x 427 -> 383 x 256), and the
    resampling is the preprocessing's "interpolation" (bicubic for torchvision's SWAG weights), mapped to Pillow's as
    torchvision's Resize maps it for a PIL image, so eval_transform's crop is then exactly what the pretrained
    weights' own transforms() give (its Resize finds the size already right and does nothing)."""
    size, interpolation = preprocess["resize_size"], preprocess["interpolation"]
    image = open_rgb(path)
    w, h = image.size
    long = max(1, int(size * max(w, h) / min(w, h)))
    new = (size, long) if w <= h else (long, size)
    if new != (w, h):
        image = image.resize(new, pil_modes_mapping[InterpolationMode(interpolation)])
    return v2.functional.pil_to_tensor(image)


def _decode_or_why(path, preprocess):
    """(decode(path, preprocess), None), or (None, why) for an image that cannot be read."""
    try:
        return decode(path, preprocess), None
    except UserError as e:
        return None, str(e).removeprefix(f"{path}: ")


def physical_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def decode_many(paths, preprocess, threads=THREADS):
    """decode() every path in `threads` threads: a list in the same order of (tensor, None) or (None, why)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(_decode_or_why, paths, repeat(preprocess)))


def eval_batches(paths, preprocess, batch_size, failures):
    """Yield (paths, tensors) batch by batch for the images at paths, each decoded and cropped as training's test
    images are (decode_many, eval_transform); an image that cannot be read is named on stderr, added to failures
    and skipped. A progress bar on stderr for more than one image."""
    transform = eval_transform(preprocess)
    bar = tqdm(total=len(paths), unit="img", disable=len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        chunk, batch = paths[start:start + batch_size], []
        for path, (image, why) in zip(chunk, decode_many(chunk, preprocess)):
            if image is None:
                failures.append(f"{path}: {why}")
                tqdm.write(f"error: {path}: {why}", file=sys.stderr)
            else:
                batch.append((path, transform(image)))
        if batch:
            yield [path for path, _ in batch], [tensor for _, tensor in batch]
        bar.update(len(chunk))
    bar.close()


def load_split(split_dir, classes, preprocess, cache_dir=None, threads=THREADS):
    """Decode every image of split_dir/<class>/ once (decode_many, resized as `preprocess`, the model's, says);
    corrupt ones go to `skipped`.

    With cache_dir the decoded images are written there in parts of about PART_BYTES, each memory-mapped back once
    written, and later runs map the parts again: the images live in the system's file cache, so a folder larger
    than memory trains from the disk instead of being killed. Without a cache they stay in memory (a warning first
    when they would take over half of it)."""
    split_dir = Path(split_dir)
    files = [(label, p) for label, name in enumerate(classes) for p in list_files(split_dir / name)]
    images = [(label, p) for label, p in files if is_image(p)]
    non_images = non_image_note([p for _, p in files])  # from the folder as it is now, also for a cache's images
    size, interpolation = preprocess["resize_size"], preprocess["interpolation"]
    per_image = 3 * size * size * 4 // 3  # bytes of a decoded 4:3 photo
    cache = None
    if cache_dir is not None:  # one cache per (folder, classes, size, resampling), named for the images' stats
        folder = repr((str(split_dir.resolve()), list(classes), size, interpolation))
        stats = [(str(p.relative_to(split_dir)), *file_signature(p)) for _, p in images]
        cache = Path(cache_dir) / f"v{CACHE_VERSION}-{digest(folder)}-{digest(repr(stats))}.pt"
        if cache.exists():
            try:
                return replace(read_cache(cache, split_dir), non_images=non_images)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError):
                pass  # unreadable cache: decode again and overwrite it
    memory = physical_memory()
    if cache is None and memory and len(images) * per_image > memory / 2:
        print(f"warning: {split_dir}: {len(images)} images take about {len(images) * per_image / 2**30:.1f} GiB once "
              f"decoded, all kept in memory (this machine has {memory / 2**30:.1f} GiB); if the run is killed, use "
              "fewer images or a smaller image size", file=sys.stderr)
    out, parts = Decoded([], [], [], non_images=non_images), []
    step = max(1, PART_BYTES // per_image)
    for first in range(0, len(images), step):  # one part in memory at a time
        part = images[first:first + step]
        kept, decoded = [], decode_many([path for _, path in part], preprocess, threads)
        for (label, path), (image, why) in zip(part, decoded):
            if image is None:
                out.skipped.append((str(path), why))
                continue
            kept.append(image)
            out.labels.append(label)
            out.paths.append(str(path))
        if cache is not None and kept:
            name = cache.with_name(f"{cache.stem}-{len(parts)}.pt")
            try:
                kept = write_mapped(kept, name)
                parts.append(name.name)
            except UserError as e:  # a cache that cannot be written costs the next run time, not this run
                print(f"warning: {e}{UNCACHED}", file=sys.stderr)
                cache = None  # the rest stays in memory
        out.images.extend(kept)
    for label, name in enumerate(classes):
        if label not in out.labels:
            found = any(label == i for i, _ in images)
            raise UserError(f"{split_dir / name}: " + ("none of its images could be decoded; replace them or remove "
                                                       "the folder" if found else NO_IMAGES))
    if cache is not None:  # the index, written last: the cache is complete once it exists
        relative = [str(Path(p).relative_to(split_dir)) for p in out.paths]  # the folder may be named otherwise later
        skipped = [(str(Path(p).relative_to(split_dir)), why) for p, why in out.skipped]
        try:
            save_checkpoint(dict(vars(out), images=parts, paths=relative, skipped=skipped), cache)
        except UserError as e:
            print(f"warning: {e}{UNCACHED}", file=sys.stderr)
        else:
            out.parts = [str(cache.with_name(name)) for name in parts]
            remove_stale(cache)
    return out


def remove_stale(cache):
    """Delete the caches of the same folder, classes and size as `cache` (of the folder's earlier contents), and
    those of any folder written by another CACHE_VERSION (never read again), that no run has written or read for
    STALE seconds: a run that maps one, or is about to (its spawned workers map the files themselves), or is still
    writing one, keeps it."""
    now = time.time()
    earlier = cache.parent.glob(f"{cache.name.rsplit('-', 1)[0]}-*.pt")  # v{CACHE_VERSION}-{folder}-*.pt
    other_versions = [p for p in cache.parent.glob("*.pt")
                      if (name := CACHE_NAME.fullmatch(p.name)) and name[1] != str(CACHE_VERSION)]
    for path in chain(earlier, other_versions):
        if not path.name.startswith(cache.stem):  # not this cache's index or parts
            try:
                if now - path.stat().st_mtime > STALE:
                    path.unlink()
            except OSError:  # gone already, or mapped by a running process where that forbids deleting
                pass


def digest(text):
    """A short hex digest of a string, for cache file names."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_signature(path):
    """What changes when a file's content does, without reading it: size, modification and change times, inode
    (tools that copy a file's times, cp -p or rsync -a, cannot copy its change time); a link to nothing: its own."""
    try:
        st = path.stat()
    except OSError:
        st = path.lstat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def write_mapped(tensors, path):
    """save_checkpoint(tensors, path) (atomic: runs sharing a cache never read half a file), then the tensors
    memory-mapped back from the file; UserError naming the file where either fails."""
    save_checkpoint(tensors, path)
    try:
        return torch.load(path, mmap=True, weights_only=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path}: cannot memory-map it ({e})") from None


def read_cache(index, split_dir):
    """The Decoded that load_split cached at `index` for split_dir, its images memory-mapped from their parts."""
    saved = torch.load(index, weights_only=True)
    saved["parts"] = [str(Path(index).with_name(name)) for name in saved.pop("images")]
    try:  # marks the cache as in use, for remove_stale (the times of its parts follow)
        for path in (index, *saved["parts"]):
            os.utime(path)
    except OSError:  # a read-only cache: it stays unmarked
        pass
    images = map_parts(saved["parts"])
    if len(images) != len(saved["labels"]):
        raise ValueError(f"{index}: parts do not match the index")
    saved["paths"] = [str(split_dir / p) for p in saved["paths"]]
    saved["skipped"] = [(str(split_dir / p), why) for p, why in saved["skipped"]]
    return Decoded(images, **dict(saved, cached=True))


def map_parts(parts):
    """The images of the cache files `parts`, memory-mapped, in order."""
    return [image for part in parts for image in torch.load(part, mmap=True, weights_only=True)]


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


def train_loader(dataset, batch_size, order, generator, workers, pin_memory):
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


def train_transform(image_size, mean, std, *, scale=(0.35, 1.0), trivial_augment=1.0, erase_p=0.25):
    """Per-sample training augmentation of a uint8 tensor or PIL image -> normalised float tensor (3, S, S).

    trivial_augment: the probability that an image gets a TrivialAugmentWide op (0: the step is left out).
    """
    trivial = v2.TrivialAugmentWide() if trivial_augment >= 1 else v2.RandomApply([v2.TrivialAugmentWide()],
                                                                                   p=trivial_augment)
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        *([trivial] if trivial_augment > 0 else []),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
        v2.RandomErasing(p=erase_p),
        v2.ToPureTensor(),
    ])


def eval_transform(preprocess, normalise=True):
    """Evaluation preprocessing (resize shorter side, center crop, normalise) from a model.preprocess dict.

    normalise=False stops at the uint8 crop, for eval_normalise to finish whole batches on the device.
    """
    return v2.Compose([
        v2.Resize(preprocess["resize_size"], v2.InterpolationMode(preprocess["interpolation"]), antialias=True),
        v2.CenterCrop(preprocess["crop_size"]),
        v2.ToImage(),
        *([eval_normalise(preprocess)] if normalise else []),
        v2.ToPureTensor(),
    ])


def eval_normalise(preprocess):
    """uint8 image or batch -> float, scaled to [0, 1] and normalised with the model's mean and std."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess["mean"], preprocess["std"])])


def eval_images(decoded, preprocess, indices=None, workers=0):
    """TensorDataset of uint8 (3, crop, crop) evaluation crops and labels, of `indices` (default: all).

    Evaluation preprocessing is the same every epoch, so train.py does it once, not in workers every epoch.
    """
    dataset = ImageDataset(decoded, eval_transform(preprocess, normalise=False))
    loader = torch.utils.data.DataLoader(dataset if indices is None else torch.utils.data.Subset(dataset, indices),
                                         batch_size=256, num_workers=workers)
    batches = list(loader) or [(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))]
    return torch.utils.data.TensorDataset(*(torch.cat(parts) for parts in zip(*batches)))


class MixupCutmix:
    """Batch-level Mixup or CutMix (50/50 per batch, applied with probability p) -> (images, soft targets)."""

    def __init__(self, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, p=1.0):
        self.num_classes, self.p = num_classes, p
        self.alphas = [(name, torch.distributions.Beta(a, a))  # made once: each one costs the host a dozen operators
                       for name, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]

    def __call__(self, images, labels):
        targets = F.one_hot(labels, self.num_classes).to(images.dtype)
        if not self.alphas or torch.rand(()) >= self.p:
            return images, targets
        name, beta = self.alphas[torch.randint(len(self.alphas), ()).item()]
        lam = beta.sample().item()
        partner = images.roll(1, 0)  # pair each image with its neighbour in the batch
        if name == "mixup":
            images = lam * images + (1 - lam) * partner
        else:
            h, w = images.shape[-2:]
            cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
            half_h, half_w = int(h * (1 - lam) ** 0.5) // 2, int(w * (1 - lam) ** 0.5) // 2
            y0, y1, x0, x1 = max(cy - half_h, 0), min(cy + half_h, h), max(cx - half_w, 0), min(cx + half_w, w)
            images = images.clone()
            images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted box may be clipped at the border
        return images, lam * targets + (1 - lam) * targets.roll(1, 0)
