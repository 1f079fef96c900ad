"""Training augmentation of whole batches on the training device: vit.transforms.train_transform op for op, built from
it (BatchAugment.from_transform reads its steps and their parameters).

vit.transforms.train_transform runs per image in DataLoader workers, a few CPU milliseconds per image: on a GPU
that starves the model. Here the decoded uint8 images stay on the device (DeviceImages) and BatchAugment
applies the same steps to a whole batch with tensor ops, each sample with its own random parameters:
RandomResizedCrop, horizontal flip, TrivialAugmentWide (14 ops, 31 magnitude bins, nearest, fill 0, on uint8
values rounded, clamped and truncated as torchvision's uint8 kernels), to float, Normalize, RandomErasing
(value 0). DeviceLoader shuffles, shards and batches them in place of DataLoader and DistributedSampler.

Random parameters are drawn on the CPU (torch's global RNG or a torch.Generator) and reach the device in one
copy per call (two more with TrivialAugment), so a seed gives the same batch twice, on any device (not the
per-sample path's batch: the draws differ), and the GPU is never waited for. The one difference from
the per-sample path is the crop's resampling: roi_align (bilinear, ceil(box / size) samples per output
pixel and axis: a box filter when shrinking) where torchvision's antialiased resize uses a triangle filter,
so shrunk crops differ by a few levels, and the outermost output pixels also read the image pixel just
beyond the box (never the padding), where torchvision clamps at the box's edge. Enlarged crops inside that
border, and every TrivialAugment op, agree with torchvision within one level (tests/test_augment.py).
"""
import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vit.device import physical_memory

SPACE = v2.TrivialAugmentWide._AUGMENTATION_SPACE  # op: (magnitudes(bins, h, w) or None, signed): torchvision's
OPS = tuple(SPACE)
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def to_device(t, device):
    """A CPU tensor on `device` without waiting for the GPU: a plain copy to CUDA blocks until every queued
    kernel has run, so the next batch could not be prepared while the model trains on this one."""
    if torch.device(device).type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def magnitudes(bins=31):
    """The (ops, bins) magnitude table, torchvision's (SPACE; zeros for the ops without a magnitude), as float64."""
    rows = [fn(bins, 0, 0) for fn, _ in SPACE.values()]  # TrivialAugmentWide's magnitudes ignore the image's size
    return torch.stack([torch.zeros(bins) if m is None else m.float() for m in rows]).double()


def _proposals(areas, scale, ratio, generator, tries=10):
    """torchvision's box proposals: area ~ U(scale) * areas, width/height log-uniform in ratio -> (h, w) (n, tries)."""
    u = torch.rand(2, len(areas), tries, dtype=torch.float64, generator=generator)
    area = areas.double()[:, None] * (scale[0] + (scale[1] - scale[0]) * u[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[1])
    return torch.sqrt(area / aspect).round(), torch.sqrt(area * aspect).round()


def _first(fits, values):
    """Per row, the value at the first True of `fits` (at column 0 where none fits)."""
    return values.gather(1, fits.long().argmax(1, keepdim=True)).squeeze(1)


def crop_boxes(sizes, scale, ratio=(3 / 4, 4 / 3), generator=None):
    """RandomResizedCrop's parameters for each row (h, w) of sizes, first fitting try of 10 -> top, left, h, w."""
    H, W = sizes.cpu().double().unbind(1)
    h, w = _proposals(H * W, scale, ratio, generator)
    fits = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    found = fits.any(1)  # else the central crop, its aspect clamped to the ratio range
    h = torch.where(found, _first(fits, h), torch.where(W / H < ratio[0], (W / ratio[0]).round(), H))
    w = torch.where(found, _first(fits, w), torch.where(W / H > ratio[1], (H * ratio[1]).round(), W))
    u = torch.rand(2, len(H), dtype=torch.float64, generator=generator)  # uniform offsets: randint(room + 1)
    top = torch.where(found, u[0] * (H - h + 1), (H - h) / 2).floor()
    left = torch.where(found, u[1] * (W - w + 1), (W - w) / 2).floor()
    return top.long(), left.long(), h.long(), w.long()


def resized_crops(images, sizes, boxes, size):
    """Each image's box resampled to size x size by roi_align (bilinear; a box filter when shrinking) -> uint8.

    sizes: each image's true (h, w), boxes: (index, left, top, right, bottom) per image, both float on the device.
    """
    n, _, hmax, wmax = images.shape
    x, b = images.float(), torch.arange(n, device=images.device)
    hh, ww = sizes.long().unbind(1)
    # Bilinear samples reach one pixel past the box: copy each image's last column and row there, so padding
    # never leaks in and the edge is clamped, as in torchvision's resize.
    x[b, :, :, ww.clamp(max=wmax - 1)] = x[b, :, :, ww - 1]
    x[b, :, hh.clamp(max=hmax - 1)] = x[b, :, hh - 1]
    out = roi_align(x, boxes, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)  # 0: ceil(box / size)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _affine(images, ops, m):
    """ShearX/Y, TranslateX/Y, Rotate as torchvision's affine/rotate: per-sample inverse matrices, nearest, fill 0."""
    n, _, size, _ = images.shape
    is_op = {name: (ops == OPS.index(name)).double() for name in GEOMETRIC}
    rad = torch.deg2rad(-m) * is_op["Rotate"]
    shx, shy = m * is_op["ShearX"], m * is_op["ShearY"]  # shear about the top-left corner, as TrivialAugment does
    tx, ty = m.trunc() * is_op["TranslateX"], m.trunc() * is_op["TranslateY"]
    theta = torch.stack([rad.cos(), rad.sin() + shx, shx * size / 2 - tx,
                         shy - rad.sin(), rad.cos(), shy * size / 2 - ty], 1).view(n, 2, 3).float()
    c = torch.linspace((1 - size) * 0.5, (size - 1) * 0.5, size, device=images.device)  # pixel centres, 0 central
    base = torch.stack([c.expand(size, size), c[:, None].expand(size, size), torch.ones_like(c).expand(size, size)], -1)
    theta = to_device(theta, images.device).transpose(1, 2) / (size / 2)
    grid = base.view(1, -1, 3).expand(n, -1, -1).bmm(theta).view(n, size, size, 2)
    out = F.grid_sample(images.float(), grid, mode="nearest", align_corners=False)
    return out.round_().to(torch.uint8)


def _gray(x):
    """Luma of uint8 images as torchvision computes it before a blend: float, floored, (n, 1, H, W)."""
    r, g, b = x.float().unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _blend(x, y, factor):
    """x * factor + y * (1 - factor) per sample, clamped and truncated to uint8 as torchvision's _blend."""
    f = factor.view(-1, 1, 1, 1)
    return x.float().mul_(f.float()).addcmul_(y, (1 - f).float()).clamp_(0, 255).to(torch.uint8)


def _sharpness(x, factor):
    """Blend with the 3x3 smoothing filter (5 in the middle) inside a one-pixel border, as adjust_sharpness."""
    kernel = to_device(torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13, x.device)
    out = x.float()
    blurred = F.conv2d(out, kernel.expand(3, 1, 3, 3), groups=3).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.addcmul_(blurred - inner, (1 - factor).float().view(-1, 1, 1, 1))
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(x, bits):
    """Keep the top `bits` bits of each value (per-sample bits)."""
    drop = 8 - bits.long()
    return x & ((255 >> drop) << drop).to(torch.uint8).view(-1, 1, 1, 1)


COLOUR = {  # op: fn(uint8 images, per-sample magnitudes as float64 on their device) -> uint8 images
    "Brightness": lambda x, m: _blend(x, torch.zeros((), device=x.device), 1 + m),
    "Color": lambda x, m: _blend(x, _gray(x), 1 + m),
    "Contrast": lambda x, m: _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), 1 + m),
    "Sharpness": lambda x, m: _sharpness(x, 1 + m),
    "Posterize": _posterize,
    "Solarize": lambda x, m: torch.where(x.float() >= (255 * m).float().view(-1, 1, 1, 1), 255 - x, x),
    "AutoContrast": lambda x, m: TF.autocontrast(x),
    "Equalize": lambda x, m: TF.equalize(x),
}


def apply_ops(images, ops, mags):
    """TrivialAugmentWide's op OPS[ops[i]] with magnitude mags[i] on uint8 image i (ops, mags: CPU tensors)."""
    out, dev = images.clone(), images.device
    groups = [(torch.isin(ops, torch.tensor([OPS.index(name) for name in GEOMETRIC])), None)]
    groups += [(ops == OPS.index(name), fn) for name, fn in COLOUR.items()]
    groups = [(idx, fn) for idx, fn in ((chosen.nonzero().squeeze(1), fn) for chosen, fn in groups) if len(idx)]
    if not groups:
        return out
    order = torch.cat([idx for idx, _ in groups])  # the samples of every op, in one copy to the device
    counts = [len(idx) for idx, _ in groups]
    on_dev, mags_dev = to_device(order, dev).split(counts), to_device(mags[order], dev).split(counts)
    for (idx, fn), i, m in zip(groups, on_dev, mags_dev):  # one call per op (all geometric ops: one)
        out[i] = _affine(images[i], ops[idx], mags[idx]) if fn is None else fn(images[i], m)
    return out


def erase_boxes(n, size, p, generator=None, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """RandomErasing's boxes for n images of size x size, each erased with probability p -> top, left, h, w."""
    w, h = _proposals(torch.full((n,), size * size), scale, ratio, generator)  # torchvision: h = sqrt(area * ratio)
    fits = (h < size) & (w < size)
    h, w = _first(fits, h), _first(fits, w)
    u = torch.rand(3, n, dtype=torch.float64, generator=generator)
    h = torch.where((u[0] < p) & fits.any(1), h, 0)  # not erased: an empty box
    return (u[1] * (size - h + 1)).floor(), (u[2] * (size - w + 1)).floor(), h, w


def box_masks(boxes, size):
    """(n, 4) top, left, h, w on the device -> bool (n, size, size), True inside each box."""
    r = torch.arange(size, device=boxes.device)
    top, left, h, w = boxes[:, :, None].unbind(1)
    rows, cols = (r >= top) & (r < top + h), (r >= left) & (r < left + w)
    return rows[:, :, None] & cols[:, None, :]


class BatchAugment(torch.nn.Module):
    """vit.transforms.train_transform for a batch: uint8 (B, 3, Hmax, Wmax) and true sizes (B, 2) -> float (B, 3, S, S).

    from_transform builds it from train_transform's own steps and their parameters; flip_p and ops (names from OPS to
    draw from) switch steps off in tests.
    """

    def __init__(self, image_size, mean, std, scale=(0.35, 1.0), trivial_augment=1.0, erase_p=0.25, flip_p=0.5,
                 ops=OPS, bins=31, ratio=(3 / 4, 4 / 3), erase_scale=(0.02, 0.33), erase_ratio=(0.3, 3.3)):
        super().__init__()
        self.image_size, self.trivial_augment = image_size, trivial_augment
        std = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)  # Normalize of x / 255 as one multiply-add
        self.register_buffer("scale_255", (1 / (255 * std)).float(), persistent=False)
        self.register_buffer("shift", (-torch.tensor(mean).view(3, 1, 1) / std).float(), persistent=False)
        self.scale, self.ratio, self.erase_p, self.flip_p = scale, ratio, erase_p, flip_p
        self.erase_scale, self.erase_ratio = erase_scale, erase_ratio
        self.ops = torch.tensor([OPS.index(name) for name in ops])
        self.table, self.signed = magnitudes(bins), torch.tensor([signed for _, signed in SPACE.values()])

    @classmethod
    def from_transform(cls, transform):
        """The batch version of a per-image v2.Compose of train_transform's kinds of step, with their parameters: a
        step it has no batch version of is refused (add one here, or augment per image: --augment workers)."""
        kw, steps = dict(trivial_augment=0.0, erase_p=0.0, flip_p=0.0), list(transform.transforms)
        for step in steps:
            if isinstance(step, v2.RandomApply) and [type(t) for t in step.transforms] == [v2.TrivialAugmentWide]:
                kw.update(trivial_augment=step.p, bins=step.transforms[0].num_magnitude_bins)
            elif isinstance(step, v2.TrivialAugmentWide):
                kw.update(trivial_augment=1.0, bins=step.num_magnitude_bins)
            elif isinstance(step, v2.RandomResizedCrop):
                kw.update(image_size=step.size[0], scale=step.scale, ratio=step.ratio)
            elif isinstance(step, v2.RandomHorizontalFlip):
                kw.update(flip_p=step.p)
            elif isinstance(step, v2.Normalize):
                kw.update(mean=step.mean, std=step.std)
            elif isinstance(step, v2.RandomErasing):
                if step.value not in ([0.0], [0], 0):
                    raise ValueError(f"vit.augment erases with 0 only, not {step.value}")
                kw.update(erase_p=step.p, erase_scale=step.scale, erase_ratio=step.ratio)
            elif not isinstance(step, (v2.ToImage, v2.ToDtype, v2.ToPureTensor)):  # the batch is made float anyway
                raise ValueError(f"vit.augment has no batch version of {type(step).__name__}; add one, or augment "
                                 "per image (--augment workers)")
        return cls(**kw)

    def forward(self, images, sizes, generator=None):
        """Each image's valid region is its top-left sizes[i] = (h, w); random numbers come from `generator` (CPU)."""
        n, size, g = len(images), self.image_size, generator
        sizes = sizes.cpu()
        top, left, h, w = crop_boxes(sizes, self.scale, self.ratio, generator=g)
        flip = torch.rand(n, generator=g) < self.flip_p
        ops = self.ops[torch.randint(len(self.ops), (n,), generator=g)]
        if self.trivial_augment < 1:  # the images that get no TrivialAugment op get Identity
            ops[torch.rand(n, generator=g) >= self.trivial_augment] = OPS.index("Identity")
        mags = self.table[ops, torch.randint(self.table.shape[1], (n,), generator=g)]
        negate = self.signed[ops] & (torch.rand(n, generator=g) <= 0.5)
        erase = erase_boxes(n, size, self.erase_p, g, self.erase_scale, self.erase_ratio)
        # every per-sample number the device needs, in one copy: sizes, crop box, flip, erasing box
        params = torch.stack([*sizes.unbind(1), torch.arange(n), left, top, left + w, top + h, flip, *erase], 1)
        params = to_device(params.float(), images.device)  # whole numbers, exact in float32 up to 2^24
        x = resized_crops(images, params[:, :2], params[:, 2:7], size)
        x = torch.where(params[:, 7, None, None, None] > 0, x.flip(-1), x)
        if (ops != OPS.index("Identity")).any():
            x = apply_ops(x, ops, torch.where(negate, -mags, mags))
        x = torch.addcmul(self.shift.to(x.device), x, self.scale_255.to(x.device))  # to float [0, 1], Normalize
        return x.masked_fill_(box_masks(params[:, 8:], size)[:, None], 0.0)


def padded_bytes(decoded):
    """Bytes that DeviceImages takes for a Decoded: every image padded to the largest height and width."""
    hmax, wmax = (max(im.shape[axis] for im in decoded.images) for axis in (-2, -1))
    return len(decoded.images) * 3 * hmax * wmax


def too_large(decoded, device, share=0.25):
    """Why DeviceImages of `decoded` would not fit in `share` of the device's free memory (of the machine's memory
    off CUDA), naming the images that set the padding (a panorama pads every photo to its length); or None."""
    device = torch.device(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else physical_memory()
    if free is None or padded_bytes(decoded) <= share * free:
        return None
    tallest, widest = (max(range(len(decoded.images)), key=lambda i: decoded.images[i].shape[axis])
                       for axis in (-2, -1))
    h, w = decoded.images[tallest].shape[-2], decoded.images[widest].shape[-1]
    return (f"the training images padded to {h} x {w} px (by {decoded.paths[tallest]} and {decoded.paths[widest]}) "
            f"would take {padded_bytes(decoded) / 2**20:,.0f} MiB, over {share:.0%} of "
            + ("the GPU's free memory" if device.type == "cuda" else "this machine's memory"))


class DeviceImages:
    """A Decoded's images padded into one uint8 tensor (N, 3, Hmax, Wmax) at the top left, true (h, w), labels."""

    def __init__(self, decoded, device):
        self.sizes = torch.tensor([tuple(im.shape[-2:]) for im in decoded.images], dtype=torch.long)
        hmax, wmax = self.sizes.max(0).values.tolist()
        self.images = torch.zeros(len(self.sizes), 3, hmax, wmax, dtype=torch.uint8, device=device)
        for i, im in enumerate(decoded.images):  # once, at start-up
            self.images[i, :, :im.shape[-2], :im.shape[-1]] = im
        self.sizes, self.labels = self.sizes.to(device), torch.as_tensor(decoded.labels, device=device)

    def __len__(self):
        return len(self.images)

    def batch(self, indices):
        """(images, sizes, labels) of the given indices, on the device."""
        idx = to_device(torch.as_tensor(indices), self.images.device)
        return self.images[idx], self.sizes[idx], self.labels[idx]


class DeviceLoader:
    """(augment(images), labels) batches of a DeviceImages, in a new order from `generator` every epoch.

    With world_size > 1 each rank takes every world_size-th index of the permutation, padded to equal shares,
    like DistributedSampler. The augmentation draws from torch's global RNG: seed it differently per rank.
    Consecutive batches are augmented in one call where their padded images hold at most floats_per_call values
    (2^26: 256 MB as float32; 225 photos at 64 px fit at once, 2 batches of 128 at 224 px): the host's work per
    call hardly depends on its size, and small models on a GPU wait for the host.
    """

    def __init__(self, decoded, augment, batch_size, device, generator, world_size=1, rank=0, drop_last=False,
                 floats_per_call=2**26):
        self.data = decoded if isinstance(decoded, DeviceImages) else DeviceImages(decoded, device)
        self.sizes = self.data.sizes.cpu()  # crop parameters are drawn on the CPU: no device sync per batch
        self.augment, self.batch_size, self.generator = augment, batch_size, generator
        self.world_size, self.rank, self.drop_last = world_size, rank, drop_last
        self.per_rank = math.ceil(len(self.data) / world_size)
        self.batches_per_call = max(1, floats_per_call // (self.data.images[0].numel() * batch_size))

    def __len__(self):
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.data), generator=self.generator)
        total = self.per_rank * self.world_size
        order = order.repeat(math.ceil(total / len(order)))[:total][self.rank::self.world_size]
        for first in range(0, len(self), self.batches_per_call):
            end = min(first + self.batches_per_call, len(self))
            idx = order[first * self.batch_size:end * self.batch_size]
            images, _, labels = self.data.batch(idx)
            yield from zip(self.augment(images, self.sizes[idx]).split(self.batch_size), labels.split(self.batch_size))
