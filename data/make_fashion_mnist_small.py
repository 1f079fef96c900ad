"""Regenerate data/fashion_mnist_small from the original Fashion-MNIST idx files.

Takes the first 100 training and the first 30 test images of each class (in file order) and
writes them as 28x28 greyscale PNGs to <out>/{train,test}/<class>/<index>.png, where <index>
is the image's position in the original idx file.

    apt-get install dataset-fashion-mnist   # Debian: files in /usr/share/datasets/fashion-mnist
    python data/make_fashion_mnist_small.py
"""
import argparse
import gzip
import shutil
from pathlib import Path

from PIL import Image

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]  # Fashion-MNIST label order
PER_CLASS = {"train": 100, "test": 30}
FILES = {"train": "train", "test": "t10k"}  # idx file prefix for each split


def read_idx(path, header_bytes):
    """Return the payload bytes of a gzipped idx file (after its header)."""
    with gzip.open(path, "rb") as f:
        return f.read()[header_bytes:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="/usr/share/datasets/fashion-mnist", help="folder with the *-ubyte.gz files")
    bundled = Path(__file__).parent / "fashion_mnist_small"
    parser.add_argument("--out", default=str(bundled))
    args = parser.parse_args()
    out = Path(args.out)
    licence = (bundled / "LICENSE").read_bytes()  # Fashion-MNIST's MIT licence travels with the images
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "LICENSE").write_bytes(licence)
    for split, prefix in FILES.items():
        labels = read_idx(Path(args.src) / f"{prefix}-labels-idx1-ubyte.gz", 8)
        pixels = read_idx(Path(args.src) / f"{prefix}-images-idx3-ubyte.gz", 16)
        counts = [0] * len(CLASSES)
        for index, label in enumerate(labels):
            if counts[label] == PER_CLASS[split]:
                continue
            counts[label] += 1
            folder = out / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.frombytes("L", (28, 28), pixels[index * 784:(index + 1) * 784])
            image.save(folder / f"{index}.png", optimize=True)
            if min(counts) == PER_CLASS[split]:
                break
        print(f"{split}: {sum(counts)} images, last index {index}")


if __name__ == "__main__":
    main()
