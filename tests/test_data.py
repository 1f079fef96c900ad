"""Tests for the data modules (vit/folders.py, decoding.py, cache.py, transforms.py, loaders.py): folder checks,
decoding, cache, transforms, Mixup/CutMix, download."""
import functools
import io
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from vit.cache import load_split
from vit.decoding import Decoded, decode, open_rgb
from vit.folders import DATASETS, download, find_splits, list_files, resolve_data
from vit.loaders import ImageDataset, SeededOrder, eval_images, seed_epoch
from vit.transforms import eval_normalise, eval_transform, mixing, train_transform
import vit.cache
import vit.decoding
import vit.weights
from vit.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def resized(size):
    """The preprocessing keys decode reads: shorter side `size`, bilinear."""
    return {"resize_size": size, "interpolation": "bilinear"}


def write_image(path, size=(8, 6), color=(200, 30, 30), mode="RGB"):
    """Write a small solid-colour image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def make_tree(root, classes=("cat", "dog"), per_class=2, test="test"):
    """ROOT/{train,test}/<class>/<i>.png with `per_class` tiny images each."""
    for split in ("train", test):
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", color=(40 * c, 10 * i, 90))
    return root


# ---- find_splits -----------------------------------------------------------------------------------------------------

def test_find_splits_valid_tree_and_val_alias(tmp_path):
    splits = find_splits(make_tree(tmp_path / "ds", classes=("b", "a", "C"), test="val"))
    assert splits.classes == ["C", "a", "b"]  # sorted like ImageFolder
    assert splits.train_dir == tmp_path / "ds" / "train" and splits.test_dir == tmp_path / "ds" / "val"


def test_find_splits_takes_capitalised_splits_and_names_loose_images(tmp_path, capsys):
    make_tree(tmp_path, classes=("a", "b"))
    os.rename(tmp_path / "train", tmp_path / "Train")  # as made on macOS or Windows, whose names ignore case
    os.rename(tmp_path / "test", tmp_path / "TEST")
    write_image(tmp_path / "Train" / "stray.png")
    write_image(tmp_path / "Train" / "stray2.png")
    splits = find_splits(tmp_path)
    assert (splits.train_dir, splits.test_dir, splits.classes) == (tmp_path / "Train", tmp_path / "TEST", ["a", "b"])
    assert capsys.readouterr().err == (f"warning: {tmp_path / 'Train'}: 2 image(s) outside the class folders are not "
                                       "used (stray.png, ...); move them into their class's folder\n")


def test_find_splits_missing_root(tmp_path):
    with pytest.raises(UserError, match=r"nope: no such folder"):
        find_splits(tmp_path / "nope")


def test_find_splits_root_is_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match=r"file\.txt: not a folder"):
        find_splits(tmp_path / "file.txt")


def test_find_splits_missing_train(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"train: missing"):
        find_splits(tmp_path)


def test_find_splits_says_how_to_fix_a_folder_without_train_and_test(tmp_path):
    for name in ("cat", "dog", "fox", "owl"):
        write_image(tmp_path / name / "0.png")
    with pytest.raises(UserError) as e:
        find_splits(tmp_path)
    assert str(e.value) == (f"{tmp_path}: class folders (cat, dog, fox, ...) but no train/ and test/; move about a "
                            f"fifth of each class's images to {tmp_path / 'test' / '<class>'} and the rest to "
                            f"{tmp_path / 'train' / '<class>'}")
    make_tree(tmp_path / "ds")
    with pytest.raises(UserError, match=r"train: one split of a dataset, not its root; pass the folder above it"):
        find_splits(tmp_path / "ds" / "train")  # a split passed as --data
    for name in ("cat", "dog"):  # the images a folder deeper: the same hint
        write_image(tmp_path / "nested" / name / "2019" / "0.png")
    with pytest.raises(UserError, match=r"nested: class folders \(cat, dog\) but no train/ and test/; move about"):
        find_splits(tmp_path / "nested")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_images_in_linked_folders_count_as_imagefolder_counts_them(tmp_path):
    for i in range(3):
        write_image(tmp_path / "elsewhere" / f"{i}.png")
    write_image(tmp_path / "train" / "a" / "own.png")
    write_image(tmp_path / "train" / "b" / "own.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "train" / "a" / "more")  # a linked sub-folder of a class
    decoded = load_split(tmp_path / "train", ["a", "b"], resized(8))
    folder = torchvision.datasets.ImageFolder(tmp_path / "train")
    assert decoded.labels == [0, 0, 0, 0, 1] and len(folder) == 5


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_link_back_up_the_tree_is_not_followed_round_and_round(tmp_path):
    write_image(tmp_path / "train" / "a" / "own.png")
    write_image(tmp_path / "train" / "b" / "own.png")
    os.symlink(tmp_path / "train", tmp_path / "train" / "a" / "up")  # a loop: every image under train/, b's too
    decoded = load_split(tmp_path / "train", ["a", "b"], resized(8))
    assert decoded.labels == [0, 1] and [Path(p).name for p in decoded.paths] == ["own.png", "own.png"]


def test_two_links_that_lead_to_each_other_are_followed_once(tmp_path):
    """a/b -> b and b/a -> a: neither leads above its own folder, but together they loop (ImageFolder: 40 times)."""
    for name in ("a", "b"):
        write_image(tmp_path / name / "own.png")
    os.symlink(tmp_path / "b", tmp_path / "a" / "b")
    os.symlink(tmp_path / "a", tmp_path / "b" / "a")
    assert list_files(tmp_path / "a") == [tmp_path / "a" / "b" / "own.png", tmp_path / "a" / "own.png"]
    assert list_files(tmp_path) == [tmp_path / name for name in ("a/b/own.png", "a/own.png", "b/a/own.png",
                                                                     "b/own.png")]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_links_up_from_the_listed_folder_or_a_linked_one_are_not_followed(tmp_path, monkeypatch):
    """A link to the dataset root above train/ (it would take test/'s images as a's), and, in a folder reached by a
    link (elsewhere/x/y), a link up to elsewhere/x: neither is in the walk, both lead above a folder of it; also
    where the folder is given by a relative path."""
    write_image(tmp_path / "train" / "a" / "own.png")
    write_image(tmp_path / "test" / "a" / "other.png")
    write_image(tmp_path / "elsewhere" / "x" / "beside.png")
    write_image(tmp_path / "elsewhere" / "x" / "y" / "linked.png")
    os.symlink(tmp_path, tmp_path / "train" / "a" / "root")
    os.symlink(tmp_path / "elsewhere" / "x" / "y", tmp_path / "train" / "a" / "y")
    os.symlink(tmp_path / "elsewhere" / "x", tmp_path / "elsewhere" / "x" / "y" / "up")
    expected = [Path("train/a/own.png"), Path("train/a/y/linked.png")]
    assert list_files(tmp_path / "train" / "a") == [tmp_path / p for p in expected]
    monkeypatch.chdir(tmp_path)
    assert list_files(Path("train/a")) == expected


def test_find_splits_missing_test(tmp_path):
    write_image(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(UserError, match=r"test: missing \(val/ is accepted too\)"):
        find_splits(tmp_path)


def test_find_splits_class_mismatch_names_both_sides(tmp_path):
    make_tree(tmp_path, classes=("a", "b"))
    write_image(tmp_path / "train" / "only_train" / "0.png")
    write_image(tmp_path / "test" / "only_test" / "0.png")
    with pytest.raises(UserError, match=r"missing in test/: only_train; missing in train/: only_test"):
        find_splits(tmp_path)
    for split, name in (("train", "caf\u00e9"), ("test", "cafe\u0301"), ("train", "steak ")):  # invisible differences
        write_image(tmp_path / split / name / "0.png")
    with pytest.raises(UserError, match=re.escape("(missing in test/: 'caf\\xe9', only_train, 'steak '; missing in "
                                                  "train/: 'cafe\\u0301', only_test)")):
        find_splits(tmp_path)


def test_find_splits_empty_class_folder(tmp_path):
    make_tree(tmp_path, classes=("a", "b"))
    (tmp_path / "test" / "c").mkdir()
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "train" / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"train[/\\]c: no images"):
        find_splits(tmp_path)
    with pytest.raises(UserError, match=r"train[/\\]c: no images \(.*\); add images or remove the class folder$"):
        load_split(tmp_path / "train", ["a", "b", "c"], resized(8))  # as predict.py --evaluate gives it classes


def test_find_splits_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match=r"train: no class folders, so no images"):
        find_splits(tmp_path)


def test_find_splits_one_class_is_refused(tmp_path):
    make_tree(tmp_path, classes=("a",))
    with pytest.raises(UserError, match=r"train: one class folder \(a\); a classifier needs at least two"):
        find_splits(tmp_path)


# ---- open_rgb / load_split -------------------------------------------------------------------------------------------

def test_load_split_skips_non_images_and_corrupt_images(tmp_path):
    make_tree(tmp_path, classes=("a", "b"), per_class=2)
    (tmp_path / "train" / "a" / "readme.txt").write_text("hello")
    (tmp_path / "train" / "a" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"\0\5\26\7Mac OS X")  # macOS's AppleDouble file: hidden
    write_image(tmp_path / "train" / "a" / "photo.jfif", size=(8, 8))  # Pillow reads it, ImageFolder skips it: so do we
    (tmp_path / "train" / "b" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, format="PNG", compress_level=0)
    (tmp_path / "train" / "b" / "truncated.png").write_bytes(good.getvalue()[:2000])
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.replace(tmp_path / "gone.png", tmp_path / "train" / "b" / "gone.png")  # a link to a file that is gone
    decoded = load_split(tmp_path / "train", ["a", "b"], resized(8))
    assert decoded.non_images == "skipped 4 non-image file(s): hidden 2, .jfif 1, .txt 1"
    assert len(decoded.images) == len(decoded.labels) == len(decoded.paths) == 4
    assert sorted(Path(p).name for p, _ in decoded.skipped) == ["garbage.jpg", "gone.png", "truncated.png"]
    reasons = {Path(p).name: reason for p, reason in decoded.skipped}
    assert "cannot read image" in reasons["garbage.jpg"] and "cannot read image" in reasons["truncated.png"]
    assert reasons["gone.png"] == "no such file; check the path"
    assert decoded.labels == [0, 0, 1, 1]


def test_load_split_in_threads_equals_one_by_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(5):  # random pixels and five sizes: a different order or resize would show
            pixels = torch.randint(0, 256, (12 + i, 9 + 2 * i, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "train" / c / f"{i}.png")
    (tmp_path / "train" / "b" / "2_garbage.jpg").write_bytes(b"not a jpeg")
    one = load_split(tmp_path / "train", ["a", "b"], resized(8), threads=1)
    four = load_split(tmp_path / "train", ["a", "b"], resized(8), threads=4)
    assert len(one.images) == 10 and all(torch.equal(x, y) for x, y in zip(one.images, four.images))
    assert (one.labels, one.paths, one.skipped) == (four.labels, four.paths, four.skipped)
    assert [Path(p).name for p, _ in four.skipped] == ["2_garbage.jpg"]


def test_open_rgb_names_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError, match=r"bad\.png: cannot read image"):
        open_rgb(bad)
    with pytest.raises(UserError, match=r"missing\.jpg: no such file"):
        open_rgb(tmp_path / "missing.jpg")


def test_class_with_only_corrupt_images_is_an_error(tmp_path):
    make_tree(tmp_path, classes=("a", "b"), per_class=1)
    (tmp_path / "train" / "b" / "0.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"train[/\\]b: none of its images could be decoded"):
        load_split(tmp_path / "train", ["a", "b"], resized(8))


@pytest.mark.parametrize("name,mode,color,expected", [
    ("grey.png", "L", 77, (77, 77, 77)),
    ("rgba.png", "RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white
    ("half.png", "LA", (0, 128), (127, 127, 127)),  # black at half alpha over white
    ("cmyk.jpg", "CMYK", (0, 255, 255, 0), (255, 0, 0)),  # approx red
    ("cmyk.tif", "CMYK", (0, 0, 0, 255), (0, 0, 0)),
    ("wide.png", "I;16", 40000, (156, 156, 156)),  # 16-bit scaled to 8 bits, not clipped to white
    ("unit.tif", "F", 0.5, (127, 127, 127)),  # floats of 0-1, not black
    ("levels.tif", "F", 200.0, (200, 200, 200)),  # floats of 0-255 as they are
])
def test_open_rgb_converts_modes(tmp_path, name, mode, color, expected):
    image = open_rgb(write_image(tmp_path / name, mode=mode, color=color))
    assert image.mode == "RGB" and image.size == (8, 6)
    assert all(abs(a - b) <= 3 for a, b in zip(image.getpixel((4, 3)), expected))


def test_open_rgb_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.save(tmp_path / "pal.png", transparency=0)
    rgb = open_rgb(tmp_path / "pal.png")
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 1)) == (10, 200, 30)


def test_decompression_bomb_refused_and_one_below_it_named(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UserError, match=r"big\.png: refused as a possible decompression bomb \(Image size "
                                         r"\(4096 pixels\) exceeds limit of 200 pixels, .*\); if you trust the file"):
        open_rgb(path)
    code = ("from PIL import Image; import vit.decoding; Image.MAX_IMAGE_PIXELS = 3000; "  # once to twice: decoded
            f"print(vit.decoding.open_rgb({str(path)!r}).size)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout == "(64, 64)\n"  # and only our line, not Pillow's warning, which names no file
    assert result.stderr == (f"warning: {path}: 64 x 64 px, over Pillow's limit of 3000 pixels for images it trusts; "
                             "decoded (refused from twice that), but resizing it would save time\n")


def test_load_split_resizes_shorter_side_keeping_aspect(tmp_path):
    write_image(tmp_path / "a" / "wide.png", size=(40, 20))
    write_image(tmp_path / "a" / "tall.png", size=(10, 30))
    decoded = load_split(tmp_path, ["a"], resized(10))
    shapes = {Path(p).name: tuple(t.shape) for p, t in zip(decoded.paths, decoded.images)}
    assert shapes == {"wide.png": (3, 10, 20), "tall.png": (3, 30, 10)}
    assert all(t.dtype == torch.uint8 for t in decoded.images)


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    make_tree(tmp_path / "ds", classes=("a", "b"), per_class=2)
    split, cache = tmp_path / "ds" / "train", tmp_path / "cache"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(split / "a" / "0.png", format="BMP")  # its size never changes
    first = load_split(split, ["a", "b"], resized(8), cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 2  # the index and one part of images

    def no_decode(path, size):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(vit.decoding, "decode", no_decode)
        second = load_split(split, ["a", "b"], resized(8), cache_dir=cache)
    assert second.labels == first.labels and second.paths == first.paths and second.cached and not first.cached
    assert all(torch.equal(x, y) for x, y in zip(first.images, second.images))
    moved = load_split(tmp_path / "ds" / ".." / "ds" / "train", ["a", "b"], resized(8), cache_dir=cache)
    assert moved.cached and moved.paths == [str(tmp_path / "ds" / ".." / "ds" / "train" / p) for p in
                                            ("a/0.png", "a/1.png", "b/0.png", "b/1.png")]  # as this call names them

    changed, before = split / "a" / "0.png", (split / "a" / "0.png").stat()
    Image.new("RGB", (8, 6), (0, 255, 0)).save(tmp_path / "new.png", format="BMP")  # the same size and times, as
    # cp -p or rsync -a copies a file
    os.utime(tmp_path / "new.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp_path / "new.png", changed)
    assert changed.stat().st_size == before.st_size and changed.stat().st_mtime_ns == before.st_mtime_ns
    earlier = set(cache.glob("*.pt"))  # the index and part of the first contents, used a moment ago
    third = load_split(split, ["a", "b"], resized(8), cache_dir=cache)
    assert third.images[0][:, 0, 0].tolist() == [0, 255, 0] and not third.cached
    assert earlier < set(cache.glob("*.pt"))  # kept: a run may still use it (its spawned workers map its files)
    hexes = "ab12" * 5, "cd34" * 5  # indexes and parts of other CACHE_VERSIONs, of any folder: never read again
    old_format = {cache / f"{name}{end}.pt" for name in (hexes[0], "-".join(hexes), "v2-" + "-".join(hexes))
                  for end in ("", "-0")}  # version 2, 3, and one written as 'v2-...'
    other = cache / f"{hexes[0]}-notes.pt"  # not a cache's name: kept
    for path in earlier | old_format | {other}:  # unused for two days: the next cache of this folder deletes them
        path.touch()
        os.utime(path, (time.time() - 2 * 86_400,) * 2)
    write_image(split / "b" / "new.png")
    load_split(split, ["a", "b"], resized(8), cache_dir=cache)
    assert len(set(cache.glob("*.pt"))) == 5 and not (earlier | old_format) & set(cache.glob("*.pt"))
    assert other.exists()


def test_a_cache_is_per_image_size(tmp_path):
    """train.py decodes to its --image-size's resize: a run at another size must not read images of the first."""
    make_tree(tmp_path / "ds", classes=("a", "b"), per_class=1)
    split, cache = tmp_path / "ds" / "train", tmp_path / "cache"
    small = load_split(split, ["a", "b"], resized(8), cache_dir=cache)
    large = load_split(split, ["a", "b"], resized(16), cache_dir=cache)
    assert not large.cached and [min(im.shape[1:]) for im in small.images + large.images] == [8, 8, 16, 16]
    assert load_split(split, ["a", "b"], resized(8), cache_dir=cache).cached  # each size's cache stays


def mapped_files():
    """Files this process has memory-mapped (Linux)."""
    return {line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split()) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_cached_images_are_memory_mapped_in_parts(tmp_path, monkeypatch):
    """A folder larger than memory trains: decoding holds one part at a time, the images are mapped from the disk."""
    make_tree(tmp_path / "ds", classes=("a", "b"), per_class=3)
    split, cache = tmp_path / "ds" / "train", tmp_path / "cache"
    plain = load_split(split, ["a", "b"], resized(8))
    monkeypatch.setattr(vit.cache, "PART_BYTES", 2 * 3 * 8 * 8 * 4 // 3)  # two images per part
    decoded = [load_split(split, ["a", "b"], resized(8), cache_dir=cache) for _ in range(2)]  # decoded, then read
    parts = sorted(str(p) for p in cache.glob("v*-*-*-*.pt"))
    assert len(parts) == 3 and set(parts) <= mapped_files()
    for d in decoded:
        assert d.paths == plain.paths and d.labels == plain.labels
        assert all(torch.equal(x, y) for x, y in zip(d.images, plain.images))

    os.remove(parts[1])  # a part lost: the cache is decoded again, not read short
    again = load_split(split, ["a", "b"], resized(8), cache_dir=cache)
    assert len(again.images) == 6 and Path(parts[1]).exists()


def test_seeded_order_seeds_each_image_not_each_place():
    """Under torchrun the ranks seed their generators alike: seeds by place would augment rank 0's k-th image
    exactly as rank 1's."""
    shares = [[4, 7, 1], [0, 3, 5]]  # two ranks' shares of 8 images, as DistributedSampler deals them
    drawn = [list(SeededOrder(share, torch.Generator().manual_seed(0), 8)) for share in shares]
    seeds = {i: seed for pairs in drawn for seed, i in pairs}
    assert len(set(seeds.values())) == 6  # an own seed for every image
    again = list(SeededOrder([1, 4], torch.Generator().manual_seed(0), 8))
    assert again == [(seeds[1], 1), (seeds[4], 4)]  # whichever rank or place it has


def test_each_epoch_is_seeded_from_seed_and_epoch_alone():
    """A resumed run repeats an epoch exactly, and under torchrun every epoch has its own shuffle (a
    DistributedSampler not told its epoch deals epoch 0's shares every epoch)."""
    from torch.utils.data.distributed import DistributedSampler

    def epoch_draws(epoch, rank, generator=None):
        generator = generator or torch.Generator()
        sampler = DistributedSampler(range(12), num_replicas=2, rank=rank, seed=3)
        seed_epoch(3, epoch, rank, generator, sampler)
        return list(sampler), torch.randint(10**9, (2,), generator=generator).tolist(), torch.rand(2).tolist()

    first = epoch_draws(1, rank=0)
    used = torch.Generator().manual_seed(99)  # a generator with a history, as in a run's later epochs
    assert epoch_draws(1, rank=0, generator=used) == first  # a resumed run: the same order and draws
    second = epoch_draws(2, rank=0)
    assert second[0] != first[0] and second[1] != first[1]  # a new shuffle, a new order for the data
    other_rank = epoch_draws(1, rank=1)
    assert other_rank[1] == first[1] and other_rank[2] != first[2]  # one data order; each rank's own dropout


def test_a_cached_dataset_goes_to_a_spawned_worker_as_file_names(tmp_path):
    """Under spawn (macOS, Windows) a DataLoader pickles its dataset to every worker: a cached one sends the names
    of its files, which the worker maps, not a copy of every image in shared memory."""
    import pickle
    make_tree(tmp_path / "ds", classes=("a", "b"), per_class=3)
    for cache in (tmp_path / "cache", tmp_path / "cache"):  # decoded and cached, then read from the cache
        decoded = load_split(tmp_path / "ds" / "train", ["a", "b"], resized(64), cache_dir=cache)
        dataset = ImageDataset(decoded, torch.clone)
        sent = pickle.dumps(dataset)
        assert len(sent) < 2000 < sum(image.nbytes for image in decoded.images)  # 6 images of 64 x 64
        received = pickle.loads(sent)
        assert all(torch.equal(received[i][0], dataset[i][0]) for i in range(len(dataset)))
    uncached = ImageDataset(load_split(tmp_path / "ds" / "train", ["a", "b"], resized(64)), torch.clone)
    assert len(pickle.dumps(uncached)) > sum(image.nbytes for image in uncached.decoded.images)  # the images


def test_a_cache_that_cannot_be_written_warns_and_decodes(tmp_path, capsys):
    make_tree(tmp_path / "ds", classes=("a", "b"), per_class=2)
    (tmp_path / "cache").write_text("a file, not a folder")
    decoded = load_split(tmp_path / "ds" / "train", ["a", "b"], resized(8), cache_dir=tmp_path / "cache")
    assert len(decoded.images) == 4
    err = capsys.readouterr().err
    assert re.match(f"warning: {tmp_path / 'cache'}/[\\w-]+\\.pt: cannot write .*decoded again", err)


def test_more_images_than_memory_warns_before_decoding(tmp_path, capsys, monkeypatch):
    make_tree(tmp_path, classes=("a", "b"), per_class=2)
    load_split(tmp_path / "train", ["a", "b"], resized(8))
    assert capsys.readouterr().err == ""  # 4 images of 8 px fit
    monkeypatch.setattr(vit.cache, "physical_memory", lambda: 1024)  # 4 images of 3 x 8 x 8 x 4/3 bytes need all 1 KiB
    decoded = load_split(tmp_path / "train", ["a", "b"], resized(8))
    assert len(decoded.images) == 4  # a warning, not an error: the estimate assumes 4:3 photos
    assert capsys.readouterr().err == (f"warning: {tmp_path / 'train'}: 4 images take about 0.0 GiB once decoded, all "
                                       "kept in memory (this machine has 0.0 GiB); if the run is killed, use fewer "
                                       "images or a smaller image size\n")


def test_image_dataset(tmp_path):
    make_tree(tmp_path, classes=("a", "b"), per_class=2)
    decoded = load_split(tmp_path / "train", ["a", "b"], resized(8))
    dataset = ImageDataset(decoded, lambda x: x.float() / 255)
    assert len(dataset) == 4
    x, y = dataset[3]
    assert y == 1 and x.dtype == torch.float32 and torch.allclose(x, decoded.images[3].float() / 255)


# ---- transforms ------------------------------------------------------------------------------------------------------

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_train_transform_shape_and_dtype():
    torch.manual_seed(0)
    transform = train_transform(16, MEAN, STD)
    image = torch.randint(0, 256, (3, 20, 27), dtype=torch.uint8)
    outputs = [transform(image) for _ in range(4)]
    assert all(type(x) is torch.Tensor and x.shape == (3, 16, 16) and x.dtype == torch.float32 for x in outputs)
    assert not torch.equal(outputs[0], outputs[1])  # random
    pil = Image.new("RGB", (30, 20), (10, 20, 30))
    assert transform(pil).shape == (3, 16, 16)


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "IMAGENET1K_SWAG_E2E_V1"])
@pytest.mark.parametrize("size", [(640, 427), (427, 640), (300, 299), (1000, 667), (500, 333)])
def test_decoded_eval_crop_equals_the_pretrained_weights_own_transforms(tmp_path, size, weights):
    """decode + eval_transform of a photo is exactly what the weights' own transforms() make of it: the longer side
    truncated as torchvision's Resize computes it (640 x 427 -> 383 x 256; rounding gave 384, a crop resampled half a
    pixel off for about half of all photos), resampled as they say (SWAG_E2E: bicubic to 384, crop 384; decoding
    resampled bilinear, and eval_transform's bicubic Resize then found the size already right)."""
    weights = torchvision.models.ViT_B_16_Weights[weights]
    preprocess, _ = vit.weights._meta(weights)
    small = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = torch.nn.functional.interpolate(small[None].float(), size=size[::-1], mode="bicubic")[0]
    path = tmp_path / "photo.png"
    Image.fromarray(pixels.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    resize = preprocess["resize_size"]
    decoded = decode(path, preprocess)
    long = int(resize * max(size) / min(size))
    assert tuple(decoded.shape[1:]) == ((long, resize) if size[1] > size[0] else (resize, long))
    with Image.open(path) as image:
        expected = weights.transforms()(image.convert("RGB"))
    assert (eval_transform(preprocess)(decoded) - expected).abs().max() < 1e-5  # Normalize's order: 1 ulp


def test_split_decoded_and_cached_with_the_preprocessings_resampling(tmp_path):
    """train.py's and predict.py --evaluate's images (load_split) resampled as the weights' preprocessing says, and a
    cache of one resampling never read for another: the SWAG weights' test crops are their own transforms()'."""
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1  # resize 384, crop 384, bicubic
    preprocess, _ = vit.weights._meta(weights)
    split, cache = tmp_path / "test", tmp_path / "cache"
    for name, size in (("a/wide.png", (500, 400)), ("b/tall.png", (400, 600))):
        small = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        pixels = torch.nn.functional.interpolate(small[None].float(), size=size[::-1], mode="bicubic")[0]
        (split / name).parent.mkdir(parents=True)
        Image.fromarray(pixels.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()).save(split / name)
    load_split(split, ["a", "b"], dict(preprocess, interpolation="bilinear"), cache)
    decoded = load_split(split, ["a", "b"], preprocess, cache)
    assert not decoded.cached  # the bilinear cache of the same folder and size is not this one
    crops = eval_normalise(preprocess)(eval_images(decoded, eval_transform(preprocess, normalise=False)).tensors[0])
    with Image.open(split / "a/wide.png") as a, Image.open(split / "b/tall.png") as b:
        expected = torch.stack([weights.transforms()(image.convert("RGB")) for image in (a, b)])
    assert (crops - expected).abs().max() < 1e-5
    again = load_split(split, ["a", "b"], preprocess, cache)
    assert again.cached and all(torch.equal(x, y) for x, y in zip(again.images, decoded.images))


def test_train_transform_crops_within_its_scale():
    """scale=(1, 1): RandomResizedCrop's box is the whole square image, so with no TrivialAugment or erasing the
    output is the image resized, or flipped (a smaller scale would zoom in)."""
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = v2.Compose([v2.Resize(16, antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])(
        image)
    transform = train_transform(16, MEAN, STD, scale=(1.0, 1.0), trivial_augment=0.0, erase_p=0.0)
    torch.manual_seed(0)
    for _ in range(8):
        out = transform(image)
        assert torch.allclose(out, whole, atol=1e-5) or torch.allclose(out, whole.flip(-1), atol=1e-5)


def test_eval_transform_deterministic_on_tensor_and_pil():
    preprocess = {"resize_size": 18, "crop_size": 16, "mean": MEAN, "std": STD, "interpolation": "bilinear"}
    transform = eval_transform(preprocess)
    image = torch.randint(0, 256, (3, 18, 24), dtype=torch.uint8)
    a, b = transform(image), transform(image)
    assert type(a) is torch.Tensor and a.shape == (3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    # a uniform grey PIL image normalises to (v - mean) / std everywhere
    out = eval_transform({**preprocess, "interpolation": "bicubic"})(Image.new("RGB", (40, 30), (128,) * 3))
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert out.shape == (3, 16, 16) and torch.allclose(out.mean((1, 2)), expected, atol=1e-4)


def test_eval_images_normalised_per_batch_equal_the_per_image_transform():
    preprocess = {"resize_size": 18, "crop_size": 16, "mean": MEAN, "std": STD, "interpolation": "bilinear"}
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 18, 18 + i), dtype=torch.uint8, generator=gen) for i in range(5)]
    decoded = Decoded(images, [0, 1, 0, 1, 1], [f"{i}.png" for i in range(5)])
    crop = eval_transform(preprocess, normalise=False)
    crops = eval_images(decoded, crop, indices=[1, 3, 4])
    assert crops.tensors[0].dtype == torch.uint8 and crops.tensors[1].tolist() == [1, 1, 1]
    per_image = torch.stack([eval_transform(preprocess)(images[i]) for i in (1, 3, 4)])
    assert torch.equal(eval_normalise(preprocess)(crops.tensors[0]), per_image)
    assert len(eval_images(decoded, crop, indices=[])) == 0  # a process with no test images


# ---- Mixup / CutMix --------------------------------------------------------------------------------------------------

def constant_batch(batch=6, size=12):
    """Image i is filled with the value i, label i: pixels tell which sample they came from."""
    images = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, size, size).clone()
    return images, torch.arange(batch)


def test_mixing_gives_mixup_or_cutmix_with_soft_targets_that_match_the_pixels():
    torch.manual_seed(0)
    mix = mixing(num_classes=10)
    images, labels = constant_batch()
    kinds = set()
    for _ in range(20):
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (6, 10) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(6)) and (targets >= 0).all()
        lam = targets[labels, labels]  # each sample's own share, its partner the sample before it
        assert torch.allclose(targets[labels, labels.roll(1)], 1 - lam)
        if torch.allclose(mixed, lam.view(-1, 1, 1, 1) * images + (1 - lam.view(-1, 1, 1, 1)) * images.roll(1, 0)):
            kinds.add("mixup")  # every pixel a blend
        else:  # a box pasted from the partner: its share of pixels is the target's
            own = (mixed == images).float().mean((1, 2, 3))
            assert torch.allclose(lam, own)
            kinds.add("cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_mixing_off_leaves_the_batch_as_it_is():
    images, labels = constant_batch()
    mixed, targets = mixing(num_classes=8, p=0.0)(images, labels)
    assert torch.equal(mixed, images) and torch.equal(targets, labels)


# ---- resolve_data / download -----------------------------------------------------------------------------------------

def serve(folder):
    """Serve `folder` over HTTP on 127.0.0.1 in a thread; returns (server, base url, list of requested paths)."""
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", requests


def make_zip(path, top=""):
    """A zip with {top}train/{x,y}/0.png and {top}test/{x,y}/0.png."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    with zipfile.ZipFile(path, "w") as z:
        for split in ("train", "test"):
            for name in ("x", "y"):
                z.writestr(f"{top}{split}/{name}/0.png", buffer.getvalue())


@pytest.mark.parametrize("top", ["", "archive_root/"])
def test_download_from_local_server_once(tmp_path, top):
    (tmp_path / "site").mkdir()
    make_zip(tmp_path / "site" / "ds.zip", top)
    server, url, requests = serve(tmp_path / "site")
    try:
        dest = download(f"{url}/ds.zip", tmp_path / "data" / "ds")
        assert dest == tmp_path / "data" / "ds"
        assert find_splits(dest).classes == ["x", "y"]
        fetched = len(requests)  # torchvision's download asks twice: for redirects, then for the file
        assert download(f"{url}/ds.zip", dest) == dest
        assert len(requests) == fetched  # the second call reused the folder
        assert [p.name for p in (tmp_path / "data").iterdir()] == ["ds"]  # no temp leftovers
    finally:
        server.shutdown()
        server.server_close()


def test_resolve_data_downloads_known_name(tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()
    make_zip(tmp_path / "site" / "ds.zip")
    server, url, _ = serve(tmp_path / "site")
    try:
        monkeypatch.setitem(DATASETS, "tiny", (f"{url}/ds.zip", None, None))
        root = resolve_data("tiny", data_dir=tmp_path / "data")
    finally:
        server.shutdown()
        server.server_close()
    assert root == tmp_path / "data" / "tiny" and (root / "train" / "x" / "0.png").is_file()


def test_download_offline_gives_hint(tmp_path):
    with pytest.raises(UserError, match=r"127\.0\.0\.1:1/x\.zip: download failed.*--data /path/to/folder"):
        download("http://127.0.0.1:1/x.zip", tmp_path / "data" / "x")
    assert list((tmp_path / "data").iterdir()) == []


def test_download_not_a_zip(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "page.zip").write_text("<html>not found</html>")
    server, url, _ = serve(tmp_path / "site")
    try:
        with pytest.raises(UserError, match=r"page\.zip: the download is not a zip archive"):
            download(f"{url}/page.zip", tmp_path / "data" / "x")
    finally:
        server.shutdown()
        server.server_close()
    assert list((tmp_path / "data").iterdir()) == []


def test_resolve_data_paths_and_unknown_names(tmp_path, monkeypatch):
    assert resolve_data(None) == REPO / "data" / "fashion_mnist_small"
    assert resolve_data(str(tmp_path)) == tmp_path
    make_tree(tmp_path / "pizza_steak_sushi")  # a folder of a known name here: it, not a download
    monkeypatch.chdir(tmp_path)
    assert resolve_data("pizza_steak_sushi") == Path("pizza_steak_sushi")
    with pytest.raises(UserError, match=r"no_such_set: no such folder and not a known dataset name.*pizza_steak_sushi"):
        resolve_data("no_such_set")


# ---- bundled and shared data -----------------------------------------------------------------------------------------

def test_bundled_fashion_mnist_small_is_valid():
    splits = find_splits(resolve_data(None))
    assert splits.classes == sorted(["t-shirt_top", "trouser", "pullover", "dress", "coat",
                                     "sandal", "shirt", "sneaker", "bag", "ankle_boot"])
    for split_dir, count in ((splits.train_dir, 100), (splits.test_dir, 30)):
        for name in splits.classes:
            assert len(list((split_dir / name).glob("*.png"))) == count, split_dir / name
    size = sum(p.stat().st_size for p in (REPO / "data" / "fashion_mnist_small").rglob("*"))
    assert size < 2_000_000
    decoded = load_split(splits.test_dir, splits.classes, resized(28))
    assert len(decoded.images) == 300 and not decoded.skipped and decoded.images[0].shape == (3, 28, 28)


def test_make_fashion_mnist_small_writes_a_new_folder_with_the_licence(tmp_path):
    """data/make_fashion_mnist_small.py on idx files written here (labels 0-9 in turn, each image one grey level):
    the first 100 training and 30 test images of each class, as PNGs named by their index, and the bundled
    folder's licence in the new one (an --out of its own has none to read)."""
    import gzip
    src, out = tmp_path / "src", tmp_path / "new"
    src.mkdir()
    for prefix, n in (("train", 1005), ("t10k", 305)):
        labels = bytes(i % 10 for i in range(n))
        pixels = b"".join(bytes([i % 251]) * 784 for i in range(n))
        (src / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(8) + labels))
        (src / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(16) + pixels))
    result = subprocess.run([sys.executable, str(REPO / "data" / "make_fashion_mnist_small.py"), "--src", str(src),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    bundled = REPO / "data" / "fashion_mnist_small"
    assert (out / "LICENSE").read_bytes() == (bundled / "LICENSE").read_bytes()
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(p.name for p in (bundled / "train").iterdir())
    for split, count in (("train", 100), ("test", 30)):
        assert all(len(list(folder.iterdir())) == count for folder in (out / split).iterdir())
    with Image.open(out / "test" / "trouser" / "291.png") as image:  # the 30th of label 1: index 291
        assert image.size == (28, 28) and image.getextrema() == (40, 40)  # 291 % 251
    assert not (out / "test" / "trouser" / "301.png").exists()


@pytest.mark.skipif(not (SHARED / "pizza_steak_sushi").is_dir(), reason="shared data not available")
def test_shared_pizza_steak_sushi():
    splits = find_splits(SHARED / "pizza_steak_sushi")
    assert splits.classes == ["pizza", "steak", "sushi"]
    decoded = load_split(splits.train_dir, splits.classes, resized(32))
    assert len(decoded.images) == 225 and not decoded.skipped
    assert all(t.shape[0] == 3 and min(t.shape[1:]) == 32 for t in decoded.images)
