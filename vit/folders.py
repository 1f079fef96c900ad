"""Image folders: a dataset's train/ and test/ splits and their classes, checked; the images a command line names;
the known datasets that --data downloads.

A dataset is a torchvision ImageFolder tree: ROOT/train/<class>/<image> and ROOT/test/<class>/<image>
(`val/` is accepted for `test/`).
"""
import glob
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from vit import tiny_imagenet
from vit.errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # bundled data and downloads live here
COURSE = "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data"  # the reference's photos
DATASETS = {  # names accepted by --data that are downloaded once into data/<name>: (url, MD5, what the folder holds)
    # the reference's 225 + 75 photos; no MD5: the archive is a file in a git repository, which publishes none
    "pizza_steak_sushi": (f"{COURSE}/pizza_steak_sushi.zip", None, None),
    "pizza_steak_sushi_20_percent": (f"{COURSE}/pizza_steak_sushi_20_percent.zip", None, None),  # 450 + 150
    "tiny-imagenet-200": (tiny_imagenet.URL, tiny_imagenet.MD5, tiny_imagenet.is_layout),  # CS231n's 200 classes
}
NO_IMAGES = f"no images ({' '.join(IMG_EXTENSIONS)}); add images or remove the class folder"


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
        url, md5, whole = DATASETS[arg]
        return download(url, folder, md5, whole)
    if not folder.exists():
        raise UserError(f"{arg}: no such folder and not a known dataset name (known: {', '.join(DATASETS)}); "
                        "pass a folder containing train/ and test/, or one of the names")
    return folder


def download(url, dest, md5=None, whole=None):
    """Download the zip archive at url (torchvision's download: a progress bar, the MD5 checked where given) and
    unpack it into dest, atomically (dest appears whole or not at all), unless dest is already there; whole(folder)
    says whether an unpacked archive is the dataset (a folder of one top folder: that folder)."""
    from torchvision.datasets.utils import download_url  # here: torchvision imports torch, seconds
    dest = Path(dest)
    if dest.is_dir() and (whole is None or whole(dest)):
        return dest
    by_hand = f"download and unpack {url} yourself and pass --data /path/to/folder"
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / f".{dest.name}.zip"
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    try:
        download_url(url, str(dest.parent), archive.name, md5=md5)  # reuses a whole archive already there
    except OSError as e:  # URLError, HTTPError, timeouts, refused connections
        archive.unlink(missing_ok=True)
        raise UserError(f"{url}: download failed ({getattr(e, 'reason', e)}); check the network, or "
                        f"{by_hand}") from None
    except RuntimeError:  # torchvision's "File not found or corrupted.": another MD5
        archive.unlink(missing_ok=True)
        raise UserError(f"{url}: the download is corrupt or incomplete (its MD5 is not {md5}) and was deleted; run "
                        f"again, or {by_hand}") from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except (zipfile.BadZipFile, EOFError, zlib.error):
            archive.unlink()
            raise UserError(f"{url}: the download is not a zip archive, or a damaged one; {by_hand}") from None
        except OSError as e:  # the archive is whole: kept, the next run unpacks it without downloading
            raise UserError(f"{archive}: cannot unpack it into {dest.parent} ({e.strerror or e}); free some space and "
                            "run again") from None
        entries = list(Path(tmp).iterdir())
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)  # archive with one top folder
        if whole is not None and not whole(top):
            archive.unlink()
            raise UserError(f"{url}: the archive does not hold the dataset's folders; {by_hand}")
        if dest.is_dir():
            shutil.rmtree(dest)  # a folder of another download (whole() refused it)
        os.replace(top, dest)
    archive.unlink()
    return dest


class Splits(NamedTuple):
    """A dataset's splits, checked by find_splits."""
    train_dir: Path
    test_dir: Path
    classes: list  # the class folders, sorted: the labels' order
    names: list  # what the classes are called: the names of the dataset's words.txt where it has one, else `classes`
    test_files: dict = None  # {class: its test images} where they are not in class folders (Tiny ImageNet's val/)


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
    """Check ROOT/train/<class>/* and ROOT/test/<class>/* (or val/), or Tiny ImageNet's own layout, and return their
    folders and classes, named by the dataset's words.txt where it has one (as Tiny ImageNet does)."""
    root = Path(root)
    layout = "expected ROOT/train/<class>/<images> and ROOT/test/<class>/<images>"
    if not root.exists():
        raise UserError(f"{root}: no such folder; pass --data with a folder containing train/ and test/")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; {layout}")
    if tiny_imagenet.is_layout(root):  # the official archive as unpacked: val/ labelled by val_annotations.txt
        train_dir, test_dir, test_files = root / "train", root / "val", tiny_imagenet.test_files(root)
        classes = class_folders(train_dir)
        check_classes(train_dir, classes, sorted(test_files), test_dir)
    else:
        train_dir, test_dir, test_files = *image_folders(root, layout), None
        classes = class_folders(train_dir)
        check_classes(train_dir, classes, class_folders(test_dir), test_dir)
    for split_dir in (train_dir, test_dir) if test_files is None else (train_dir,):
        for name in classes:
            if not any(is_image(p) for p in list_files(split_dir / name)):
                raise UserError(f"{split_dir / name}: {NO_IMAGES}")
        loose = [p.name for p in sorted(split_dir.iterdir()) if is_image(p) and p.is_file()]
        if loose:
            print(f"warning: {split_dir}: {len(loose)} image(s) outside the class folders are not used ({loose[0]}"
                  f"{', ...' if len(loose) > 1 else ''}); move them into their class's folder", file=sys.stderr)
    return Splits(train_dir, test_dir, classes, tiny_imagenet.class_names(root, classes) or classes, test_files)


def image_folders(root, layout):
    """(train/, test/ or val/) of an ImageFolder dataset at root; one line saying what is wrong where one is missing."""
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
    return train_dir, test_dir


def check_classes(train_dir, classes, test_classes, test_dir):
    """Refuse splits whose classes differ, and fewer than two classes."""
    if classes != test_classes:
        only_train = ", ".join(map(shown, sorted(set(classes) - set(test_classes)))) or "none"
        only_test = ", ".join(map(shown, sorted(set(test_classes) - set(classes)))) or "none"
        raise UserError(f"{train_dir.parent}: train/ and {test_dir.name}/ have different class folders (missing in "
                        f"{test_dir.name}/: {only_train}; missing in train/: {only_test}); give both the same class "
                        "folders")
    if not classes:
        raise UserError(f"{train_dir}: no class folders, so no images; expected ROOT/train/<class>/<images> and "
                        "ROOT/test/<class>/<images>")
    if len(classes) == 1:  # softmax over one class: loss 0 and accuracy 1 whatever the model, nothing to learn
        raise UserError(f"{train_dir}: one class folder ({classes[0]}); a classifier needs at least two, "
                        "add a folder of images for each other class")


def labelled_folder(root):
    """A labelled folder to evaluate on (predict.py --evaluate): ROOT/<class>/<images>, a dataset's test/ (or val/),
    or Tiny ImageNet's layout -> (the split's folder, class folders, their names (words.txt's where the dataset has
    one), {class: images} where they are not in class folders, or None)."""
    root = Path(root)
    if tiny_imagenet.is_layout(root):
        splits = find_splits(root)
        return splits.test_dir, splits.classes, splits.names, splits.test_files
    split = split_folder(root, "test", "val") or root
    if not split.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise UserError(f"{root}: {what}; pass ROOT/<class>/<images> or a root holding test/")
    folders = class_folders(split)
    if not folders:
        raise UserError(f"{split}: no class folders; pass ROOT/<class>/<images> or a root holding test/")
    names = tiny_imagenet.class_names(root, folders) or tiny_imagenet.class_names(split.parent, folders)
    return split, folders, names or folders, None


def shown(name):
    """A folder name as messages show it: with escapes where it is not plain ASCII or has edge spaces, so that
    names that differ only there (a trailing space; an accent composed or not) look different."""
    return name if name.isascii() and name == name.strip() else ascii(name)


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
