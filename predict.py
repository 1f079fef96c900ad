"""Predict the classes of images with a checkpoint of train.py (or torchvision's ImageNet ViT-B/16).

    python predict.py --model models/RUN.pt photo.jpg                    # top-3 table and a figure
    python predict.py --model models/RUN.pt photos/ 'more/*.jpg' --json  # folders, globs; one JSON object per image
    python predict.py --model models/RUN.pt photos/ --no-figures         # table and predictions.csv only (fast)
    python predict.py --model models/RUN.pt photo.jpg --explain          # also the attention rollout
    python predict.py --model models/RUN.pt --evaluate data/pizza_steak_sushi   # accuracy, per-class P/R/F1
    python predict.py --pretrained photo.jpg                             # torchvision's ImageNet ViT-B/16, downloaded
    python predict.py --pretrained vit_b_16-c867db91.pth photo.jpg       # the same from a copy of its file (offline)

--evaluate ROOT takes a labelled folder, one sub-folder per class of the model:
    ROOT/<class>/<image>           a split folder, or
    ROOT/test/<class>/<image>      a dataset as train.py takes it (test/ or val/ is evaluated)

Writes, under results/predictions/ (--save): a figure <stem>.png per image (for one image --save may name the
figure, its format from the suffix), with --explain also <stem>_attention.png; for a folder, a glob or several
images predictions.csv; with --evaluate evaluation.json and confusion_matrix.png. Tables and JSON go to stdout,
the lines saying where files went to stderr.
--pretrained PATH loads a copy of torchvision's weights file (the Table 1 model of its shapes, ImageNet's classes)
or a checkpoint of train.py, as --model does. A PATH that is an image, a folder or a glob is an input instead.
Files in a folder or glob without an image extension, and hidden ones, are skipped and counted on stderr.
Exit status: 0; 2 after any error, each one line (an image that cannot be read is named and skipped, the others
are still predicted); 130 on Ctrl-C (the figures saved so far stay).
"""
from vit.errors import interrupt_quietly
from vit.threads import share_cores

if __name__ == "__main__":  # first: Ctrl-C while torch imports (seconds) is one line, not a traceback
    interrupt_quietly()
    share_cores()  # OpenMP threads that sleep soon when they wait (vit/threads.py)

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vit.checkpoint import load_model as load_any_model
from vit.cache import CACHE_DIR, load_split
from vit.folders import expand_inputs, is_image, is_listing, labelled_folder
from vit.decoding import eval_batches
from vit.loaders import eval_images
from vit.transforms import eval_normalise, eval_transform
from vit.device import pick_device
from vit.errors import UserError, bounded, exit_status, nonempty, printable_output
from vit.explain import model_view, rollout, save_attention_figure, save_prediction_figure, token_shift
from vit.files import write_text
from vit.metrics import classification_report, evaluate, format_report
from vit.plots import FORMATS, figure_format, plot_confusion

OUT_DIR = Path("results/predictions")  # default folder for figures, predictions.csv and evaluation results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files, folders (searched recursively) or glob patterns; "
                        "--img_path PATH, the reference's spelling, is also accepted (repeatable)")
    parser.add_argument("--img_path", action="append", default=[], help=argparse.SUPPRESS)  # listed under images
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="CHECKPOINT",
                        help="checkpoint written by train.py, e.g. models/RUN.pt (none: give it or --pretrained)")
    source.add_argument("--pretrained", nargs="?", const=True, metavar="PATH",
                        help="torchvision's ImageNet vit_b_16 instead (downloaded); PATH: a copy of torchvision's "
                        "weights file, or a checkpoint of train.py (none)")
    parser.add_argument("--topk", type=bounded(int, 1), default=3, metavar="K",
                        help="classes shown per image, at most all classes (3)")
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (auto)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=bounded(int, 1), default=32,
                        metavar="N", help="images per forward pass (32)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of tables: one object per image, and one for --evaluate (off)")
    parser.add_argument("--save", type=nonempty, metavar="PATH",
                        help=f"figure path (one image; its format from the suffix) or folder ({OUT_DIR})")
    parser.add_argument("--explain", action="store_true",
                        help="also save the attention rollout over the model's input, the photo's centre crop (off)")
    parser.add_argument("--no-figures", action="store_true",
                        help="no figure per image, only the table or JSON and predictions.csv (off)")
    parser.add_argument("--evaluate", type=nonempty, metavar="ROOT",
                        help="labelled folder to measure accuracy on, layout above (none)")
    parser.add_argument("--cache-dir", type=nonempty, default=str(CACHE_DIR), metavar="DIR",
                        help="decoded-image cache for --evaluate, shared with train.py (data/.cache)")
    args = parser.parse_args(argv)
    if isinstance(args.pretrained, str) and (is_image(Path(args.pretrained)) or is_listing(args.pretrained)):
        # --pretrained photo.jpg (or photos/): an input, and torchvision's weights
        args.images, args.pretrained = [args.pretrained] + args.images, True
    if not (args.images or args.img_path or args.evaluate):
        parser.error("give at least one image, folder or glob, or --evaluate ROOT")
    if args.explain and args.no_figures:
        parser.error("--explain saves figures; leave out --no-figures")
    return args


def load_model(args):
    """The model (with .classes and .preprocess) and a label naming it: vit.checkpoint.load_model, which must find
    class names to predict."""
    model, label = load_any_model(args.model, args.pretrained)
    if not model.classes:
        raise UserError(f"{label}: holds no class names; use a checkpoint written by train.py (--model) "
                        "or torchvision's ImageNet vit_b_16 weights (--pretrained [PATH])")
    return model, label


@torch.inference_mode()
def probabilities(model, tensors, device, explain=False):
    """Softmax over all classes for a list of preprocessed (3, H, W) tensors, on the CPU, and with
    explain the attention rollout maps from the same forward pass (else None per image)."""
    x = torch.stack(tensors).to(device)
    if not explain:
        return model(x).float().softmax(dim=-1).cpu(), [None] * len(tensors)
    logits, attentions = model(x, return_attn=True)
    return logits.float().softmax(dim=-1).cpu(), rollout(attentions).cpu()


def predict(model, paths, device, batch_size, explain, failures):
    """Yield (path, input tensor, probabilities, attention map or None) per readable image, batch by batch."""
    for batch, tensors in eval_batches(paths, model.preprocess, batch_size, failures):
        probs, maps = probabilities(model, tensors, device, explain)
        yield from zip(batch, tensors, probs, maps)


def figure_paths(paths, save, explain=False):
    """Figure path per image: --save itself for one image and a file name (a suffix, not a folder), else
    FOLDER/<stem>.png (made unique). Refuses a format matplotlib cannot write (before any prediction) and
    writing over any of the images (with explain, also by an attention map)."""
    named = save and Path(save).suffix and not Path(save).is_dir()  # else a folder, as for several images
    if named and (len(paths) == 1 or Path(save).suffix[1:].lower() in FORMATS):
        figure_format(save)
        if len(paths) > 1:
            raise UserError(f"--save {save}: a file name, but {len(paths)} images; pass a folder instead")
        figures, folder = dict.fromkeys(paths, Path(save)), Path(save).parent
    else:
        folder, figures, used = Path(save or OUT_DIR), {}, set()

        def names(stem):  # the files a figure of this stem takes: with --explain, its attention map's too
            return {stem, f"{stem}_attention"} if explain else {stem}

        for path in paths:
            stem, n = path.stem, 1
            while names(stem) & used:  # same file name in two folders, or x.jpg and x_attention.jpg
                n += 1
                stem = f"{path.stem}_{n}"
            used |= names(stem)
            figures[path] = folder / f"{stem}.png"
    inputs = {path.resolve(): path for path in paths}
    for figure in figures.values():  # e.g. predict.py photos/*.png --save photos
        for written in (figure, attention_path(figure)) if explain else (figure,):
            if written.resolve() in inputs:
                raise UserError(f"--save {save}: a figure would overwrite the image {inputs[written.resolve()]}; "
                                "save the figures elsewhere")
    return figures, folder


def attention_path(figure):
    """Where --explain saves the attention map that goes with a prediction figure (in the figure's format)."""
    return figure.with_name(f"{figure.stem}_attention{figure.suffix}")


def show(path, names, probs, label, as_json):
    """Print one image's top-K as a JSON line or an aligned table (clear of the progress bar on stderr)."""
    if as_json:
        predictions = [{"class": n, "probability": round(p, 6)} for n, p in zip(names, probs)]
        text = json.dumps({"image": str(path), "predictions": predictions, "model": label})
    else:  # a file name that is not UTF-8 shown with \x escapes, as a terminal may refuse its bytes
        width, shown = max(map(len, names)), os.fsencode(path).decode("utf-8", "backslashreplace")
        text = f"{shown}\n" + "\n".join(f"  {n:<{width}}  {p:6.1%}" for n, p in zip(names, probs))
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def evaluate_folder(model, root, device, batch_size, out_dir, failures, as_json=False, cache_dir=None):
    """Accuracy, per-class metrics and confusion matrix on a labelled folder (its images decoded once into cache_dir,
    as train.py's test images are); printed (a table, or with as_json the JSON object evaluation.json holds, on one
    line) and saved in out_dir."""
    split, folders, names, files = labelled_folder(root)
    unknown = [f for f, name in zip(folders, names) if name not in model.classes]
    if unknown:
        raise UserError(f"{split}: class folder(s) {', '.join(unknown)} are not among the model's classes "
                        f"({', '.join(model.classes[:10])}); pass a folder with one sub-folder per class")
    decoded = load_split(split, folders, model.preprocess, cache_dir, files=files)
    if decoded.non_images:
        print(f"{decoded.non_images} in {split}", file=sys.stderr)
    for path, reason in decoded.skipped:
        failures.append(f"{path}: {reason}")
        print(f"error: {path}: {reason}", file=sys.stderr)
    decoded.labels = [model.classes.index(names[label]) for label in decoded.labels]  # the model's class indices
    crops = eval_images(decoded, eval_transform(model.preprocess, normalise=False))  # as train.py's test pass
    loader = DataLoader(crops, batch_size=batch_size)
    bar = tqdm(loader, desc="evaluate", unit="batch", file=sys.stderr)
    _, _, matrix = evaluate(model, bar, eval_normalise(model.preprocess), len(model.classes), device)
    report = classification_report(matrix, model.classes)
    result = dict(report, data=str(split), confusion_matrix=matrix.tolist())
    print(json.dumps(result) if as_json else f"evaluation on {split}\n{format_report(report)}", flush=True)
    write_text(out_dir / "evaluation.json", json.dumps(result, indent=1) + "\n")
    plot_confusion(matrix, model.classes, out_dir / "confusion_matrix.png")
    print(f"saved {out_dir / 'evaluation.json'} and {out_dir / 'confusion_matrix.png'}", file=sys.stderr)


def run(args):
    """Everything predict.py does; returns the exit status."""
    paths, failures, listing = expand_inputs(args.images + args.img_path)
    figures, out_dir = figure_paths([] if args.no_figures else paths, args.save, args.explain)  # before the model
    model, label = load_model(args)
    device = pick_device(args.device)
    model.to(device)
    for message in failures:
        print(f"error: {message}", file=sys.stderr)
    k = min(args.topk, len(model.classes))
    rows, saved = [], []
    for path, tensor, probs, attn_map in predict(model, paths, device, args.batch_size, args.explain, failures):
        top = probs.topk(k)
        names, top_probs = [model.classes[i] for i in top.indices], top.values.tolist()
        show(path, names, top_probs, label, args.json)
        rows.append([str(path)] + [v for pair in zip(names, top_probs) for v in pair])
        if args.no_figures:
            continue
        view = model_view(tensor, model.preprocess)
        save_prediction_figure(view, names, top_probs, figures[path])
        saved.append(figures[path])
        if attn_map is not None:
            title = f"{names[0]} ({top_probs[0]:.1%})"
            saved.append(attention_path(figures[path]))
            save_attention_figure(view, attn_map, title, saved[-1], token_shift(model))
    if saved:  # on stderr, so that --json's output stays one object per line
        where = " and ".join(map(str, saved)) if len(rows) == 1 else f"{len(saved)} figures in {out_dir}/"
        print(f"saved {where}", file=sys.stderr)
    if rows and (listing or len(paths) > 1):
        header = [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")]
        table = io.StringIO(newline="")
        csv.writer(table).writerows([["image"] + header] + rows)
        write_text(out_dir / "predictions.csv", table.getvalue())
        print(f"saved {len(rows)} predictions to {out_dir / 'predictions.csv'}", file=sys.stderr)
    if args.evaluate:
        evaluate_folder(model, args.evaluate, device, args.batch_size, out_dir, failures, args.json, args.cache_dir)
    return 2 if failures else 0


def main(argv=None):
    printable_output()
    return exit_status(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
