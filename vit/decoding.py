"""Decoding: an image file as an upright RGB uint8 tensor, its shorter side resized as the model's preprocessing says,
many at once in threads; a corrupt file is one line naming it."""
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat

from PIL import Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping
from tqdm import tqdm

from vit.errors import UserError
from vit.transforms import eval_transform

THREADS = min(8, os.cpu_count() or 1)  # decoding threads: Pillow decodes and resizes without holding the GIL
# Pillow's warning for images of 1-2 times its pixel limit names no file: open_rgb says it, naming the file (a filter
# set once here: warnings.catch_warnings around each decode is not thread-safe)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
