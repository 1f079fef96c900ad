"""A split decoded once (vit.decoding), optionally cached on disk in parts that later runs memory-map: a folder larger
than memory trains from the disk's file cache instead of being killed."""
import hashlib
import os
import pickle
import re
import sys
import time
from dataclasses import replace
from itertools import chain
from pathlib import Path

import torch

from vit.device import physical_memory
from vit.errors import UserError
from vit.files import save_atomically
from vit.folders import DATA_DIR, NO_IMAGES, is_image, list_files, non_image_note
from vit.decoding import THREADS, Decoded, decode_many

CACHE_DIR = DATA_DIR / ".cache"  # decoded images (--cache-dir of train.py and predict.py --evaluate)
CACHE_VERSION = 4  # bump when decoding or the cache's layout changes: caches of other versions are never read
CACHE_NAME = re.compile(r"(?:v(\d+)-)?[0-9a-f]{20}(?:-[0-9a-f]{20})?(?:-\d+)?\.pt")  # an index or part of any version
UNCACHED = "; the images will be decoded again next time (or choose --cache-dir)"
STALE = 86_400  # seconds unused after which a cache of a folder's earlier contents is deleted (remove_stale)
PART_BYTES = 2**28  # decoded images per cache part (256 MiB): what decoding holds in memory at once with a cache


def load_split(split_dir, classes, preprocess, cache_dir=None, threads=THREADS, files=None):
    """Decode every image of split_dir/<class>/ once (decode_many, resized as `preprocess`, the model's, says);
    corrupt ones go to `skipped`. files: {class: its images} where they are not in class folders (Tiny ImageNet's
    val/).

    With cache_dir the decoded images are written there in parts of about PART_BYTES, each memory-mapped back once
    written, and later runs map the parts again: the images live in the system's file cache, so a folder larger
    than memory trains from the disk instead of being killed. Without a cache they stay in memory (a warning first
    when they would take over half of it)."""
    split_dir = Path(split_dir)
    listed = files or {name: list_files(split_dir / name) for name in classes}
    found = [(label, p) for label, name in enumerate(classes) for p in listed[name]]
    images = [(label, p) for label, p in found if is_image(p)]
    non_images = non_image_note([p for _, p in found])  # from the folder as it is now, also for a cache's images
    cache = None
    if cache_dir is not None:  # one cache per (folder, classes, size, resampling), named for the images' stats
        folder = repr((str(split_dir.resolve()), list(classes), preprocess["resize_size"], preprocess["interpolation"]))
        stats = [(str(p.relative_to(split_dir)), *file_signature(p)) for _, p in images]
        cache = Path(cache_dir) / f"v{CACHE_VERSION}-{digest(folder)}-{digest(repr(stats))}.pt"
        if cache.exists():
            try:
                return replace(read_cache(cache, split_dir), non_images=non_images)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError):
                pass  # unreadable cache: decode again and overwrite it
    out, parts = decode_parts(split_dir, images, preprocess, threads, cache)
    out.non_images = non_images
    for label, name in enumerate(classes):
        if label not in out.labels:
            some = any(label == i for i, _ in images)
            raise UserError(f"{split_dir / name}: " + ("none of its images could be decoded; replace them or remove "
                                                       "the folder" if some else NO_IMAGES))
    if parts is not None:  # the index, written last: the cache is complete once it exists
        relative = [str(Path(p).relative_to(split_dir)) for p in out.paths]  # the folder may be named otherwise later
        skipped = [(str(Path(p).relative_to(split_dir)), why) for p, why in out.skipped]
        try:
            save_atomically(dict(vars(out), images=parts, paths=relative, skipped=skipped), cache)
        except UserError as e:
            print(f"warning: {e}{UNCACHED}", file=sys.stderr)
        else:
            out.parts = [str(cache.with_name(name)) for name in parts]
            remove_stale(cache)
    return out


def decode_parts(split_dir, images, preprocess, threads, cache):
    """Decode the (label, path) `images` part by part, each part written to the cache's files and mapped back
    (one part in memory at a time) -> (Decoded, the parts' file names, or None where nothing is cached)."""
    per_image = 3 * preprocess["resize_size"] ** 2 * 4 // 3  # bytes of a decoded 4:3 photo
    memory = physical_memory()
    if cache is None and memory and len(images) * per_image > memory / 2:
        print(f"warning: {split_dir}: {len(images)} images take about {len(images) * per_image / 2**30:.1f} GiB once "
              f"decoded, all kept in memory (this machine has {memory / 2**30:.1f} GiB); if the run is killed, use "
              "fewer images or a smaller image size", file=sys.stderr)
    out, parts = Decoded([], [], []), []
    step = max(1, PART_BYTES // per_image)
    for first in range(0, len(images), step):
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
    return out, parts if cache is not None else None


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
    """save_atomically(tensors, path) (atomic: runs sharing a cache never read half a file), then the tensors
    memory-mapped back from the file; UserError naming the file where either fails."""
    save_atomically(tensors, path)
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
