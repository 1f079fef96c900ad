"""Figure 7 of the paper (Sec. 4.5, "Inspecting the Vision Transformer") for any model: the principal components of
the patch-embedding filters E, the similarity of the position embeddings, and each head's mean attention distance by
depth (Appendix D.7, Figure 11).

    python -m vit.inspect models/RUN.pt --images FOLDER [--out results/inspect]
    python -m vit.inspect --pretrained [PATH] --images FOLDER --out results/inspect-b16

Writes OUT/embedding_filters.png (the patch stem only), position_similarity.png, attention_distance.png and
inspect.json (the numbers behind them). --images takes files, folders (searched recursively) and globs, of which the
first --max-images are preprocessed as predict.py does. Unreadable images are reported one line each and skipped;
the exit status is then 2.
"""
from vit.errors import interrupt_quietly
from vit.threads import share_cores

if __name__ == "__main__":  # first: Ctrl-C while torch imports (seconds) is one line, not a traceback
    interrupt_quietly()
    share_cores()  # OpenMP threads that sleep soon when they wait (vit/threads.py)

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vit.checkpoint import load_model
from vit.folders import expand_inputs
from vit.decoding import eval_batches
from vit.device import pick_device
from vit.errors import UserError, bounded, exit_status, nonempty, printable_output
from vit.files import write_text
from vit.plots import save_figure

COMPONENTS = 28  # Figure 7 (left) shows E's first 28 principal components, 4 x 7
FILES = ("embedding_filters.png", "position_similarity.png", "attention_distance.png", "inspect.json")


def embedding_pca(model, k=COMPONENTS):
    """Fig. 7 (left): the first k principal components of the filters of E (Eq. 1), each filter one vector of 3*P*P
    values with the mean filter subtracted -> (components (k, 3, P, P), explained variance ratio (k,)); fewer where
    the filters span fewer dimensions. A component's sign is arbitrary: here its entry of largest magnitude is
    positive. The conv stem (the hybrid) has no filters on pixels: a UserError."""
    if model.config.get("stem", "patch") != "patch":
        raise UserError("the conv stem (stem='conv', the hybrid) has no filters on image patches: its E projects each "
                        "1 x 1 patch of a CNN's feature map, so Fig. 7's filters exist for the patch stem only")
    weight = model.embed.proj.weight.detach()
    filters = weight.double().cpu()  # (D, 3, P, P)
    x = filters.flatten(1)
    _, s, vh = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False)
    rank = int((s > s.max() * max(x.shape) * torch.finfo(weight.dtype).eps).sum())  # as the weights' precision tells
    vh = vh[:min(k, rank)]
    vh = vh * vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)).sign()
    ratio = s[:len(vh)] ** 2 / (s**2).sum()
    return vh.reshape(-1, *filters.shape[1:]).float(), ratio.float()


def position_similarity(model):
    """Fig. 7 (centre): the cosine similarity of each patch position's embedding (E_pos of Eq. 1, the class token's
    left out) to every patch position's -> (g, g, g, g), [i, j] the (g, g) tile of the position in row i, column j."""
    g = model.grid_size
    pos = F.normalize(model.embed.pos_embed.detach().float().cpu()[0, 1:], dim=-1)
    return (pos @ pos.T).reshape(g, g, g, g)


def mean_attention_distance(attentions, grid, patch_size):
    """Fig. 7 (right), Appendix D.7 (Fig. 11): per layer and head, the mean over images, then over query patches, of
    sum over key patches of attention(q, k) * distance(q, k), the distance between the two patches' centres in input
    pixels (grid distance times patch_size) -> (layers, heads). attentions: per layer (B, heads, N, N), token 0 the
    class token. As in the authors' code the class token is neither query nor key and the rows are not renormalised:
    a query's weights on the patches sum to 1 less what it gives the class token. For the conv stem each token's
    receptive field is centred vit.explain.token_shift pixels up and left of its patch's centre, the same shift for
    all tokens, so the distances are these grid distances too."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()
    distance = (torch.cdist(centres, centres) * patch_size).float()  # (grid*grid, grid*grid)
    per_layer = [(attn[:, :, 1:, 1:].float() * distance.to(attn.device)).sum(-1).mean(dim=(0, 2)).cpu()
                 for attn in attentions]
    return torch.stack(per_layer)


@torch.no_grad()
def images_attention_distance(model, paths, device, batch_size, failures):
    """mean_attention_distance over the images at paths, preprocessed as predict.py does (vit.decoding.eval_batches) ->
    ((layers, heads) in pixels, the paths used). An unreadable image is reported, added to failures and skipped."""
    model.eval()
    total, used = 0, []
    for batch, tensors in eval_batches(paths, model.preprocess, batch_size, failures):
        _, attentions = model(torch.stack(tensors).to(device), return_attn=True)
        total = total + mean_attention_distance(attentions, model.grid_size, model.patch_size) * len(batch)
        used += batch
    if not used:
        raise UserError(f"none of the {len(paths)} image(s) could be read; pass --images with readable images")
    return total / len(used), used


def plot_filters(components, ratios, path):
    """Fig. 7 (left): each principal component as a (P, P) RGB image scaled to [0, 1] on its own, in a 4 x 7 grid,
    drawn with nearest-neighbour upsampling."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    for i, ax in enumerate(fig.subplots(4, 7).flat):
        ax.axis("off")
        if i < len(components):
            c = components[i]
            c = (c - c.min()) / (c.max() - c.min()).clamp(min=1e-12)
            ax.imshow(c.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(f"{i + 1}: {ratios[i]:.1%}", fontsize=8)
    fig.suptitle(f"RGB embedding filters: the first {len(components)} principal components (explained variance)")
    save_figure(fig, path)


def plot_position_similarity(similarity, path):
    """Fig. 7 (centre): a grid x grid array of tiles, the tile at (row, column) the cosine similarity of that
    position's embedding to every position's, colours from -1 to 1."""
    g = similarity.shape[0]
    tiles = F.pad(similarity, (0, 1, 0, 1), value=float("nan"))  # a blank line after each tile's row and column
    mosaic = tiles.permute(0, 2, 1, 3).reshape(g * (g + 1), g * (g + 1))[:-1, :-1]
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(mosaic.numpy(), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=ax, label="cosine similarity", ticks=[-1, -0.5, 0, 0.5, 1])
    centres = [i * (g + 1) + (g - 1) / 2 for i in range(g)]
    ax.set_xticks(centres, range(1, g + 1), fontsize=8 if g <= 16 else 6)
    ax.set_yticks(centres, range(1, g + 1), fontsize=8 if g <= 16 else 6)
    ax.set(xlabel="input patch column", ylabel="input patch row", title="position embedding similarity")
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    save_figure(fig, path)


def plot_attention_distance(distances, path, images):
    """Fig. 7 (right), Fig. 11: each head's mean attention distance in pixels against its layer (network depth)."""
    layers, heads = distances.shape
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for h in range(heads):
        ax.scatter(range(1, layers + 1), distances[:, h], s=16, color=f"C{h % 10}", label=f"head {h + 1}")
    ax.set(xlabel="network depth (layer)", ylabel="mean attention distance (pixels)",
           title=f"mean attention distance of each head ({images} images)")
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_ylim(0, max(float(distances.max()) * 1.1, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if heads <= 16:
        ax.legend(fontsize="x-small", ncol=1 if heads <= 8 else 2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


def image_paths(inputs, limit):
    """The first `limit` images of --images (files, folders searched recursively, globs: vit.folders.expand_inputs); a
    folder or glob without images, or a path that is not there, is a UserError."""
    paths, failures, _ = expand_inputs(inputs)
    if failures:
        raise UserError(failures[0])
    missing = next((p for p in paths if not p.exists() and not p.is_symlink()), None)  # a broken link: decode's error
    if missing:
        raise UserError(f"{missing}: no such file or folder; check the path given to --images")
    if len(paths) > limit:
        print(f"using the first {limit} of {len(paths)} images (--max-images)", file=sys.stderr)
    return paths[:limit]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m vit.inspect", description="The paper's Figure 7 for a model: "
                                     "embedding filters, position embedding similarity, mean attention distance.")
    parser.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint written by train.py (models/RUN.pt)")
    parser.add_argument("--pretrained", nargs="?", const=True, metavar="PATH",
                        help="torchvision's ImageNet vit_b_16 instead (downloaded), or a weights file at PATH")
    parser.add_argument("--images", nargs="+", type=nonempty, required=True, metavar="IMAGE",
                        help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--max-images", "--max_images", dest="max_images", type=bounded(int, 1), default=128,
                        metavar="N", help="use at most this many images (128, as the paper's Figure 11)")
    parser.add_argument("--out", type=nonempty, default="results/inspect", metavar="DIR",
                        help="folder for the figures and inspect.json (results/inspect)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=bounded(int, 1), default=32,
                        metavar="N", help="images per forward pass (32); each holds every layer's attention weights")
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (auto)")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.pretrained is None):
        parser.error("give a checkpoint (MODEL) or --pretrained [PATH], one of the two")
    return args


def run(args):
    """Everything python -m vit.inspect does; returns the exit status."""
    out, failures = Path(args.out), []
    paths = image_paths(args.images, args.max_images)  # before the model: a wrong folder is named at once
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: a file, not a folder; pass a folder to --out")
    model, label = load_model(args.model, args.pretrained)
    device = pick_device(args.device)
    distances, used = images_attention_distance(model.to(device), paths, device, args.batch_size, failures)
    try:
        components, ratios = embedding_pca(model)
    except UserError as e:  # the hybrid: the other two figures still
        components, ratios = None, None
        print(f"no {FILES[0]}: {e}")
    result = {"model": {"label": str(label), "name": model.name, "config": model.config,
                        "weights": getattr(model, "weights_from", None)},
              "images": {"count": len(used), "paths": [str(p) for p in used]},
              "patch_size": model.patch_size, "grid_size": model.grid_size,
              "mean_attention_distance_px": distances.tolist(),  # layers x heads
              "embedding_filters_explained_variance_ratio": None if ratios is None else ratios.tolist()}
    if components is not None:
        plot_filters(components, ratios, out / FILES[0])
    plot_position_similarity(position_similarity(model), out / FILES[1])
    plot_attention_distance(distances, out / FILES[2], len(used))
    write_text(out / FILES[3], json.dumps(result, indent=1) + "\n")
    written = FILES[components is None:]
    print(f"saved {', '.join(written[:-1])} and {written[-1]} in {out}/")
    return 2 if failures else 0


def main(argv=None):
    printable_output()
    return exit_status(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
