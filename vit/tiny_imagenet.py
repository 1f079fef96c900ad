"""Tiny ImageNet (Stanford CS231n: 200 ImageNet classes at 64x64 px) in its official layout: read its labelled
validation images and class names, and build a subset of it in the project's ImageFolder layout (train.py
--data tiny-imagenet-200 downloads it: vit.folders.DATASETS).

The archive unpacks to tiny-imagenet-200/ with wnids.txt, words.txt (wnid TAB names, for all WordNet ids),
train/<wnid>/images/<wnid>_<n>.JPEG, val/images/val_<n>.JPEG with val/val_annotations.txt (file TAB wnid TAB box)
and test/images/test_<n>.JPEG (no labels). The project uses the labelled val/ images as its test split.
"""
import os
import shutil
import tempfile
from pathlib import Path

from vit.errors import UserError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # 248,100,043 bytes
NAME = "tiny-imagenet-200"
IGNORED = {"words.txt", "MANIFEST.txt"}  # manifest lines that name no image


def is_layout(root):
    """Whether root is an unpacked Tiny ImageNet archive (it has val/val_annotations.txt)."""
    return (Path(root) / "val" / "val_annotations.txt").is_file()


def _annotations(root):
    """The lines of root/val/val_annotations.txt as (line number, file name, wnid), each line checked for its form."""
    path = Path(root) / "val" / "val_annotations.txt"
    if not path.is_file():
        raise UserError(f"{root}: not an unpacked Tiny ImageNet archive (no val/val_annotations.txt); download "
                        f"{URL} and unpack it, then pass its {NAME} folder")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or not fields[1] or "/" in fields[0] or "\\" in fields[0]:
            raise UserError(f"{path}:{number}: not 'file TAB wnid TAB box' ({line[:60]!r}); unpack the archive again")
        rows.append((number, fields[0], fields[1].strip()))
    return rows


def test_files(root):
    """The labelled validation images (the project's test split) by wnid, from val_annotations.txt, each list sorted
    by file name: {wnid: [Path, ...]}, wnids sorted."""
    root = Path(root)
    annotations = root / "val" / "val_annotations.txt"
    files = {}
    for number, name, wnid in _annotations(root):
        if not (root / "train" / wnid).is_dir():
            raise UserError(f"{annotations}:{number}: class {wnid} has no folder {root / 'train' / wnid}; "
                            "unpack the archive again")
        image = root / "val" / "images" / name
        if not image.is_file():
            raise UserError(f"{image}: missing (listed in {annotations}:{number}); the archive was partly unpacked: "
                            "unpack it again, or download it again")
        files.setdefault(wnid, []).append(image)
    return {wnid: sorted(files[wnid], key=lambda p: p.name) for wnid in sorted(files)}


def _words(path, wnids):
    """{wnid: line} for the lines of words.txt at path whose wnid is one of wnids (the first line of each)."""
    wanted, lines = set(wnids), {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid = line.split("\t", 1)[0].strip()
        if wnid in wanted and "\t" in line and wnid not in lines:
            lines[wnid] = line
    return lines


def class_names(root, wnids):
    """A readable name per wnid from root/words.txt: its first name ('goldfish'), the wnid where words.txt has none,
    'name (wnid)' for wnids that would share a name; None when there is no words.txt."""
    path = Path(root) / "words.txt"
    if not path.is_file():
        return None
    lines = _words(path, wnids)
    names = [lines[w].split("\t", 1)[1].split(",")[0].strip() if w in lines else "" for w in wnids]
    names = [name or wnid for name, wnid in zip(names, wnids)]
    return [f"{name} ({wnid})" if names.count(name) > 1 else name for name, wnid in zip(names, wnids)]


def _link_or_copy(source, target):
    """Hard-link source to target where the file system allows, else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def make_subset(source, manifest_lines, out):
    """Build out/{train,test}/<wnid>/<file> and out/words.txt from the official archive unpacked at source, taking
    exactly the files the manifest lists (train/<wnid>/<file>, test/<wnid>/<file>); returns the manifest's wnids
    that the archive lacks (skipped), sorted."""
    source, out = Path(source), Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"{out}: exists and is not empty; remove it, or pass another folder")
    labels = {name: wnid for _, name, wnid in _annotations(source)}
    files, missing = {}, set()  # {path under out: official path}
    for number, line in enumerate(manifest_lines, 1):
        line = line.strip()
        if not line or line in IGNORED:
            continue
        parts = line.split("/")
        if len(parts) != 3 or parts[0] not in ("train", "test") or not parts[1] or not parts[2]:
            raise UserError(f"manifest line {number}: {line[:60]!r} is not train/<wnid>/<file> or test/<wnid>/<file>; "
                            "use the manifest shipped in data/")
        split, wnid, name = parts
        if not (source / "train" / wnid).is_dir():
            missing.add(wnid)
            continue
        if split == "train":
            official = source / "train" / wnid / "images" / name
        else:
            official = source / "val" / "images" / name
            if labels.get(name) != wnid:
                said = labels.get(name, "not listed")
                raise UserError(f"{source / 'val' / 'val_annotations.txt'}: {name} is {said}, but manifest line "
                                f"{number} says {wnid}; this manifest is not drawn from this archive")
        if not official.is_file():
            raise UserError(f"{official}: missing (manifest line {number}: {line}); the archive was partly unpacked: "
                            "unpack it again, or download it again")
        files[out / split / wnid / name] = official
    present = sorted({target.parent.name for target in files})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:  # out appears whole, or not
        built = Path(tmp) / "subset"
        for target, official in files.items():
            target = built / target.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(official, target)
        built.mkdir(exist_ok=True)
        if (source / "words.txt").is_file():
            lines = _words(source / "words.txt", present)
            (built / "words.txt").write_text("".join(f"{lines[w]}\n" for w in present if w in lines), encoding="utf-8")
        if out.is_dir():
            out.rmdir()
        os.replace(built, out)
    return sorted(missing)
