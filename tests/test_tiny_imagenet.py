"""Tests for vit/tiny_imagenet.py and data/make_tiny_imagenet_50k.py on small archives written here in the official
layout (tiny JPEGs), served over HTTP on 127.0.0.1: download, validation images, class names, the subset and its
shipped manifest, and the one-line errors."""
import functools
import gzip
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import vit.folders as folders
import vit.tiny_imagenet as tiny
from vit.cache import load_split
from vit.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_imagenet_50k"
MANIFEST = REPO / "data" / "tiny_imagenet_50k.txt.gz"
WNIDS = ["n00000001", "n00000002", "n00000003"]
WORDS = {"n00000001": "goldfish, Carassius auratus", "n00000002": "crane",  # n00000003: no entry
         "n09999998": "crane, derrick", "n09999999": "unrelated, other"}


def jpeg(index):
    """The bytes of an 8x8 JPEG whose colour depends on index (so that files differ)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (index * 37 % 256, index * 11 % 256, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_official(parent, train=None, val=None, words=WORDS):
    """Write parent/tiny-imagenet-200 in the official layout: train = {wnid: [file]} (default: 4 per class of WNIDS),
    val = {file: wnid} (default: 2 per class, interleaved), an unlabelled test/images, wnids.txt and words.txt."""
    root = Path(parent) / tiny.NAME
    train = train or {w: [f"{w}_{n}.JPEG" for n in range(4)] for w in WNIDS}
    val = val or {f"val_{n}.JPEG": WNIDS[n % 3] for n in range(6)}
    count = 0
    for wnid, names in train.items():
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(f"{n}\t0\t0\t7\t7\n" for n in names))
        for name in names:
            count += 1
            (root / "train" / wnid / "images" / name).write_bytes(jpeg(count))
    (root / "val" / "images").mkdir(parents=True)
    for name in val:
        count += 1
        (root / "val" / "images" / name).write_bytes(jpeg(count))
    (root / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t7\t7\n" for n, w in val.items()))
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "images" / "test_0.JPEG").write_bytes(jpeg(0))
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in train))
    (root / "words.txt").write_text("".join(f"{w}\t{names}\n" for w, names in sorted(words.items())))
    return root


def zip_folder(folder, archive):
    """Zip folder (its name as the archive's top folder) into archive; returns the archive's MD5."""
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(Path(folder).rglob("*")):
            z.write(path, path.relative_to(Path(folder).parent))
    return hashlib.md5(Path(archive).read_bytes()).hexdigest()


@pytest.fixture
def site(tmp_path):
    """(folder served over HTTP on 127.0.0.1, its base url, the list of GET paths requested)."""
    folder, requests = tmp_path / "site", []
    folder.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_download_then_validation_images_and_names(tmp_path, site, monkeypatch):
    folder, url, requests = site
    md5 = zip_folder(write_official(tmp_path / "made"), folder / "archive.zip")
    monkeypatch.setitem(folders.DATASETS, tiny.NAME, (f"{url}/archive.zip", md5, tiny.is_layout))
    dest = tmp_path / "data" / tiny.NAME
    assert folders.resolve_data(tiny.NAME, tmp_path / "data") == dest
    assert tiny.is_layout(dest) and not tiny.is_layout(tmp_path / "data")
    assert sorted(p.name for p in (dest / "train").iterdir()) == WNIDS
    assert (dest / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_3.JPEG").read_bytes() == jpeg(8)
    assert list(dest.parent.iterdir()) == [dest]  # the zip deleted after unpacking, no temporary folder left
    fetched = len(requests)
    assert fetched >= 1 and set(requests) == {"/archive.zip"}  # torchvision opens it twice: for redirects, to fetch
    assert folders.resolve_data(tiny.NAME, tmp_path / "data") == dest and len(requests) == fetched  # not again

    files = tiny.test_files(dest)
    images = dest / "val" / "images"
    assert files == {WNIDS[0]: [images / "val_0.JPEG", images / "val_3.JPEG"],
                     WNIDS[1]: [images / "val_1.JPEG", images / "val_4.JPEG"],
                     WNIDS[2]: [images / "val_2.JPEG", images / "val_5.JPEG"]}

    assert tiny.class_names(dest, WNIDS) == ["goldfish", "crane", "n00000003"]
    assert tiny.class_names(dest, [*WNIDS, "n09999998"]) == [
        "goldfish", "crane (n00000002)", "n00000003", "crane (n09999998)"]
    splits = folders.find_splits(dest)  # train.py --data FOLDER on the archive as unpacked
    assert (splits.train_dir, splits.test_dir, splits.classes) == (dest / "train", dest / "val", WNIDS)
    assert splits.names == ["goldfish", "crane", "n00000003"] and splits.test_files == files
    test = load_split(splits.test_dir, splits.classes, {"resize_size": 8, "interpolation": "bilinear"},
                      files=splits.test_files)
    assert test.labels == [0, 0, 1, 1, 2, 2] and [Path(p).name for p in test.paths][:2] == ["val_0.JPEG", "val_3.JPEG"]
    (dest / "words.txt").unlink()
    assert tiny.class_names(dest, WNIDS) is None


def test_class_names_of_the_shared_set():
    if not SHARED.is_dir():
        pytest.skip("no ../shared/data/tiny_imagenet_50k")
    wnids = sorted(p.name for p in (SHARED / "train").iterdir())
    names = tiny.class_names(SHARED, wnids)
    assert len(set(names)) == len(wnids) == 201 and names[0] == "goldfish"


def closed_port_url():
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/archive.zip"


@pytest.mark.parametrize("case", ["not a zip", "wrong checksum", "no layout", "network"])
def test_download_failures_are_one_line_and_leave_nothing(tmp_path, site, monkeypatch, case):
    folder, url, _ = site
    if case == "not a zip":
        (folder / "archive.zip").write_bytes(b"<html>this is not a zip archive</html>")
        md5 = hashlib.md5((folder / "archive.zip").read_bytes()).hexdigest()
    elif case == "no layout":
        (tmp_path / "other" / "stuff").mkdir(parents=True)
        (tmp_path / "other" / "stuff" / "a.txt").write_text("a")
        md5 = zip_folder(tmp_path / "other", folder / "archive.zip")
    else:
        md5 = zip_folder(write_official(tmp_path / "made"), folder / "archive.zip")
    source = closed_port_url() if case == "network" else f"{url}/archive.zip"
    monkeypatch.setitem(folders.DATASETS, tiny.NAME, (source, "0" * 32 if case == "wrong checksum" else md5,
                                                      tiny.is_layout))
    with pytest.raises(UserError) as error:
        folders.resolve_data(tiny.NAME, tmp_path / "data")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{source}: ")
    expected = {"not a zip": "not a zip archive", "wrong checksum": "corrupt or incomplete",
                "no layout": "does not hold the dataset's folders", "network": "download failed"}[case]
    assert expected in message and "pass --data /path/to/folder" in message
    assert list((tmp_path / "data").iterdir()) == []  # no dest, no zip, no temporary folder


@pytest.mark.parametrize("case", ["missing image", "malformed line", "unknown class"])
def test_a_partial_or_damaged_archive_is_one_line(tmp_path, case):
    root = write_official(tmp_path)
    annotations = root / "val" / "val_annotations.txt"
    if case == "missing image":
        (root / "val" / "images" / "val_4.JPEG").unlink()
    else:
        lines = annotations.read_text().splitlines()
        lines[2] = "val_2.JPEG" if case == "malformed line" else "val_2.JPEG\tn07777777\t0\t0\t7\t7"
        annotations.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as error:
        tiny.test_files(root)
    message = str(error.value)
    assert "\n" not in message
    if case == "missing image":
        assert str(root / "val" / "images" / "val_4.JPEG") in message and f"{annotations}:5" in message
    else:
        assert message.startswith(f"{annotations}:3:")
        assert ("n07777777" in message) == (case == "unknown class")


def subset_manifest():
    """A manifest of two classes of write_official's archive (some of their files) and one class it lacks."""
    return ["MANIFEST.txt", "words.txt",
            f"train/{WNIDS[0]}/{WNIDS[0]}_0.JPEG", f"train/{WNIDS[0]}/{WNIDS[0]}_2.JPEG",
            f"train/{WNIDS[1]}/{WNIDS[1]}_1.JPEG", "train/n05555555/n05555555_1.JPEG",
            f"test/{WNIDS[0]}/val_3.JPEG", f"test/{WNIDS[1]}/val_1.JPEG", f"test/{WNIDS[1]}/val_4.JPEG",
            "test/n05555555/val_9.JPEG"]


def test_make_subset_takes_exactly_the_manifest(tmp_path):
    source = write_official(tmp_path / "official")
    out = tmp_path / "subset"
    assert tiny.make_subset(source, subset_manifest(), out) == ["n05555555"]
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert made == sorted([line for line in subset_manifest() if "n05555555" not in line and "/" in line]
                          + ["words.txt"])
    for line in made[:-1]:
        split, wnid, name = line.split("/")
        official = source / "train" / wnid / "images" / name if split == "train" else source / "val" / "images" / name
        assert os.path.samefile(out / line, official)  # hard-linked (tmp_path's file system allows it)
    assert (out / "words.txt").read_text() == f"{WNIDS[0]}\t{WORDS[WNIDS[0]]}\n{WNIDS[1]}\t{WORDS[WNIDS[1]]}\n"

    with pytest.raises(UserError, match="not empty"):
        tiny.make_subset(source, subset_manifest(), out)


@pytest.mark.parametrize("case", ["missing file", "wrong class"])
def test_make_subset_errors_are_one_line_and_make_nothing(tmp_path, case):
    source = write_official(tmp_path / "official")
    manifest = subset_manifest()
    if case == "missing file":
        (source / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG").unlink()
    else:
        manifest.append(f"test/{WNIDS[0]}/val_1.JPEG")  # val_1 is WNIDS[1]'s
    with pytest.raises(UserError) as error:
        tiny.make_subset(source, manifest, tmp_path / "subset")
    message = str(error.value)
    assert "\n" not in message and not (tmp_path / "subset").exists()
    if case == "missing file":
        assert message.startswith(str(source / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG"))
    else:
        assert "val_1.JPEG is n00000002" in message and f"line {len(manifest)} says n00000001" in message


def read_manifest():
    with gzip.open(MANIFEST, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def test_the_shipped_manifest():
    lines = read_manifest()
    assert len(lines) == 55_275 and lines == sorted(set(lines))
    assert MANIFEST.stat().st_size < 300_000
    parts = [line.split("/") for line in lines]
    assert all(split == "test" and name.startswith("val_") or split == "train" and name.startswith(f"{wnid}_")
               for split, wnid, name in parts)
    counts = Counter((split, wnid) for split, wnid, _ in parts)
    wnids = {wnid for _, wnid in counts}
    assert len(wnids) == 201 and "n07873807" not in wnids  # no pizza
    assert all(counts["train", w] == 250 and counts["test", w] == 25 for w in wnids)
    if SHARED.is_dir():  # the folder it was drawn from
        assert sorted(str(p.relative_to(SHARED)) for p in SHARED.glob("*/*/*")) == lines


def test_the_script_builds_the_folder_and_names_the_missing_classes(tmp_path):
    lines = read_manifest()
    wnids = sorted({line.split("/")[1] for line in lines})
    kept = wnids[:2]
    train = {w: [line.split("/")[2] for line in lines if line.startswith(f"train/{w}/")] for w in kept}
    train["n04444444"] = ["n04444444_0.JPEG"]  # a class of the archive that the manifest leaves out
    val = {name: wnid for split, wnid, name in (line.split("/") for line in lines) if split == "test" and wnid in kept}
    source = write_official(tmp_path, train, val, words={w: f"name {w}" for w in kept})
    script = [sys.executable, str(REPO / "data" / "make_tiny_imagenet_50k.py"), "--source", str(source)]
    result = subprocess.run([*script, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "2 classes, 500 train and 50 test images" in result.stdout
    assert f"199 classes of the manifest are not in this archive: {wnids[2]}, {wnids[3]}," in result.stdout
    assert "the folder has 2 classes" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "test").iterdir()) == kept

    result = subprocess.run([*script, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    # --per-class N: the first N training photos of each class in the manifest's order, every test photo
    result = subprocess.run([*script, "--out", str(tmp_path / "few"), "--per-class", "3"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and "2 classes, 6 train and 50 test images" in result.stdout, result.stderr
    for wnid in kept:
        assert sorted(p.name for p in (tmp_path / "few" / "train" / wnid).iterdir()) == sorted(train[wnid])[:3]
