"""Build data/tiny_imagenet_50k from the official Tiny ImageNet archive (Stanford CS231n).

Takes exactly the files listed in data/tiny_imagenet_50k.txt.gz (250 training and 25 test photos of each of 201
classes, drawn from a public copy of the archive) and hard-links them (copies where links are impossible) into
<out>/{train,test}/<wnid>/<file>, with <out>/words.txt naming the classes. The official archive has 200 classes,
the public copy 202 less pizza: up to two of the manifest's classes may be missing, and are named. Without the
archive at --source, downloads it there first (248 MB, its MD5 checked), as `train.py --data tiny-imagenet-200` does.

    python data/make_tiny_imagenet_50k.py                                            # data/tiny_imagenet_50k
    python data/make_tiny_imagenet_50k.py --per-class 30 --out data/tiny_imagenet_6k  # 30 of each class's 250
"""
import argparse
import gzip
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a file: vit/ is found from the repository root

from vit.errors import bounded, exit_status, nonempty, printable_output
from vit.folders import DATA_DIR, resolve_data
from vit.tiny_imagenet import NAME, make_subset

MANIFEST = REPO / "data" / "tiny_imagenet_50k.txt.gz"


def run(args):
    """Build the folder; print what it holds and which classes of the manifest the archive lacks."""
    with gzip.open(MANIFEST, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if args.per_class:  # the first N training photos of each class, in the manifest's order; every test photo
        taken, kept = Counter(), []
        for line in lines:
            if line.startswith("train/"):
                wnid = line.split("/")[1]
                taken[wnid] += 1
                if taken[wnid] > args.per_class:
                    continue
            kept.append(line)
        lines = kept
    if not Path(args.source).exists() and Path(args.source) == DATA_DIR / NAME:  # the default, not yet there
        resolve_data(NAME)  # the official archive, downloaded and unpacked there
    missing = make_subset(args.source, lines, args.out)
    out = Path(args.out)
    classes = sorted(p.name for p in (out / "train").glob("*"))
    counts = {split: sum(1 for _ in (out / split).glob("*/*")) for split in ("train", "test")}
    print(f"{out}: {len(classes)} classes, {counts['train']} train and {counts['test']} test images")
    if missing:
        print(f"{len(missing)} classes of the manifest are not in this archive: {', '.join(missing)}; "
              f"the folder has {len(classes)} classes")
    return 0


def main():
    printable_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=nonempty, default=str(DATA_DIR / NAME),
                        help="the unpacked official archive (its tiny-imagenet-200 folder; default "
                        "data/tiny-imagenet-200, downloaded there when absent)")
    parser.add_argument("--out", type=nonempty, default=str(REPO / "data" / "tiny_imagenet_50k"),
                        help="the folder to make, absent or empty (default data/tiny_imagenet_50k)")
    parser.add_argument("--per-class", type=bounded(int, 1, 250), metavar="N",
                        help="only the first N of each class's 250 training photos (all 25 test photos)")
    return exit_status(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
