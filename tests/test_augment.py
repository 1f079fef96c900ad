"""Tests for vit/augment.py: batched augmentation against torchvision's per-sample ops, padding, seeds, loader."""
import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import vit.augment
from vit.augment import (OPS, SPACE, BatchAugment, DeviceImages, DeviceLoader, apply_ops, crop_boxes, magnitudes,
                         padded_bytes, too_large)
from vit.decoding import Decoded
from vit.transforms import train_transform
from vit.distributed import own_share

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def plain(image_size, **kw):
    """BatchAugment with only the crop left on unless a test turns more on."""
    return BatchAugment(image_size, MEAN, STD, **{"flip_p": 0.0, "ops": ("Identity",), "erase_p": 0.0, **kw})


def normalise(uint8):
    """What train_transform does after TrivialAugment: to float in [0, 1], then Normalize."""
    return TF.normalize(uint8.float() / 255, list(MEAN), list(STD))


def levels(x):
    """Normalised float images back to 0..255 levels (float)."""
    return (x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255


def padded(images, pad_value=0):
    """A batch (B, 3, Hmax, Wmax) of images at the top left, the rest pad_value, and their sizes (B, 2)."""
    sizes = torch.tensor([im.shape[-2:] for im in images])
    out = torch.full((len(images), 3, *sizes.max(0).values.tolist()), pad_value, dtype=torch.uint8)
    for i, im in enumerate(images):
        out[i, :, :im.shape[1], :im.shape[2]] = im
    return out, sizes


def noise(*shape, seed=0):
    """Random uint8 pixels from a fixed seed."""
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---- TrivialAugment --------------------------------------------------------------------------------------------------

def test_magnitudes_match_torchvision():
    table = magnitudes(31)
    assert len(OPS) == len(v2.TrivialAugmentWide._AUGMENTATION_SPACE) == 14
    for k, (name, (fn, signed)) in enumerate(v2.TrivialAugmentWide._AUGMENTATION_SPACE.items()):
        assert OPS[k] == name and SPACE[name][1] == signed
        expected = fn(31, 32, 32)
        assert torch.equal(table[k], torch.zeros(31, dtype=torch.float64) if expected is None else expected.double())


def reference_op(image, name, magnitude):
    """torchvision's functional op with TrivialAugmentWide's arguments (nearest, fill 0; shears about the corner)."""
    affine = dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0], interpolation=v2.InterpolationMode.NEAREST)
    shear = math.degrees(math.atan(magnitude))
    return {
        "Identity": lambda: image,
        "ShearX": lambda: TF.affine(image, **{**affine, "shear": [shear, 0.0]}, center=[0, 0]),
        "ShearY": lambda: TF.affine(image, **{**affine, "shear": [0.0, shear]}, center=[0, 0]),
        "TranslateX": lambda: TF.affine(image, **{**affine, "translate": [int(magnitude), 0]}),
        "TranslateY": lambda: TF.affine(image, **{**affine, "translate": [0, int(magnitude)]}),
        "Rotate": lambda: TF.rotate(image, magnitude, interpolation=v2.InterpolationMode.NEAREST),
        "Brightness": lambda: TF.adjust_brightness(image, 1.0 + magnitude),
        "Color": lambda: TF.adjust_saturation(image, 1.0 + magnitude),
        "Contrast": lambda: TF.adjust_contrast(image, 1.0 + magnitude),
        "Sharpness": lambda: TF.adjust_sharpness(image, 1.0 + magnitude),
        "Posterize": lambda: TF.posterize(image, int(magnitude)),
        "Solarize": lambda: TF.solarize(image, 255.0 * magnitude),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
    }[name]()


@pytest.mark.parametrize("name", OPS)
def test_op_matches_torchvision_per_sample(name):
    k = OPS.index(name)
    mags = magnitudes(31)[k, ::2]  # every other bin (first and last included), both signs, one sample each
    mags = torch.cat([mags, -mags]) if SPACE[name][1] else mags
    images = noise(len(mags), 3, 20, 20, seed=k)
    images[::3] //= 4  # some dark, low-contrast images for AutoContrast, Equalize and Contrast
    out = apply_ops(images, torch.full((len(mags),), k), mags)
    assert out.dtype == torch.uint8
    for image, result, m in zip(images, out, mags.tolist()):
        diff = (result.int() - reference_op(image, name, m).int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, (name, m)


def test_ops_are_applied_to_the_samples_that_drew_them():
    images = noise(4, 3, 12, 12)
    ops = torch.tensor([OPS.index(n) for n in ("Identity", "Rotate", "Posterize", "Brightness")])
    out = apply_ops(images, ops, torch.tensor([0.0, 90.0, 2.0, -0.5], dtype=torch.float64))
    assert torch.equal(out[0], images[0])
    assert torch.equal(out[1], torch.rot90(images[1], 1, (-2, -1)))  # torchvision rotates counter-clockwise
    assert torch.equal(out[2], images[2] & 0b11000000)
    assert torch.equal(out[3], (images[3] * 0.5).to(torch.uint8))


# ---- crops -----------------------------------------------------------------------------------------------------------

def test_output_shape_dtype_and_normalisation():
    flat = [torch.full((3, 10, 14), 200, dtype=torch.uint8), torch.full((3, 16, 9), 40, dtype=torch.uint8)]
    images, sizes = padded(flat, pad_value=99)
    out = plain(8, scale=(0.35, 1.0), flip_p=0.5)(images, sizes)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    expected = normalise(torch.tensor([200, 40], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 8, 8))
    torch.testing.assert_close(out, expected)


def test_crops_never_sample_the_padding():
    sizes = [(6 + i % 5, 6 + (3 * i) % 11) for i in range(48)]
    images, sizes = padded([torch.zeros(3, h, w, dtype=torch.uint8) for h, w in sizes], pad_value=255)
    torch.manual_seed(0)
    out = plain(16, scale=(0.02, 1.0), flip_p=0.5)(images, sizes)  # small boxes reach every edge
    torch.testing.assert_close(out, normalise(torch.zeros(48, 3, 16, 16, dtype=torch.uint8)), rtol=0, atol=0)


def test_scale_one_gives_the_central_crop_resized():
    # square images always give the whole image; others fall back to the centre, aspect clamped to [3/4, 4/3]
    images = [noise(3, 16, 16, seed=1), noise(3, 16, 24, seed=2), noise(3, 24, 16, seed=3), noise(3, 12, 30, seed=4)]
    boxes = [(0, 0, 16, 16), (0, 1, 16, 21), (1, 0, 21, 16), (0, 7, 12, 16)]  # top, left, h, w
    batch, sizes = padded(images, pad_value=255)
    torch.manual_seed(0)
    out = plain(32, scale=(1.0, 1.0))(batch, sizes)  # enlarging: torchvision's antialias has no effect
    for image, box, result in zip(images, boxes, out):
        diff = (levels(result) - TF.resized_crop(image, *box, [32, 32], antialias=True).float()).abs()
        if box[2:] == tuple(image.shape[1:]):  # the whole image: equal but for rounding
            assert diff.max() <= 1.01
        else:  # the outermost output pixels also read the pixel beyond the box, where torchvision clamps
            assert diff[:, 1:-1, 1:-1].max() <= 1.01


def test_shrinking_is_close_to_torchvision_antialias():
    y, x = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    smooth = torch.stack([x * 4, y * 5, 128 + 100 * torch.sin(x / 6) * torch.cos(y / 7)]).round().to(torch.uint8)
    batch, sizes = padded([smooth] * 16)
    params = crop_boxes(sizes, (0.35, 1.0), generator=torch.Generator().manual_seed(3))  # the first draws of:
    out = plain(12)(batch, sizes, generator=torch.Generator().manual_seed(3))
    for i, result in enumerate(out):
        expected = normalise(TF.resized_crop(smooth, *(int(p[i]) for p in params), [12, 12], antialias=True))
        assert (levels(result) - levels(expected)).abs().mean() < 2.5  # box vs triangle filter


def test_crop_boxes_follow_torchvision_distribution():
    n, (H, W) = 4000, (30, 50)
    top, left, h, w = crop_boxes(torch.tensor([[H, W]] * n), (0.35, 1.0), generator=torch.Generator().manual_seed(0))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert ((top + h == H) & (h < H)).any() and ((left + w == W) & (w < W)).any()  # the last offsets drawn too
    torch.manual_seed(0)
    rrc, image = v2.RandomResizedCrop(8, scale=(0.35, 1.0)), torch.zeros(3, H, W)
    ref = torch.tensor([list(rrc.make_params([image]).values()) for _ in range(n)], dtype=torch.float64).T
    ours = torch.stack([top, left, h, w]).double()
    for stat in (lambda t, l, h, w: h * w / (H * W), lambda t, l, h, w: (w / h).log(), lambda t, l, h, w: t / H,
                 lambda t, l, h, w: l / W):
        assert abs(stat(*ours).mean() - stat(*ref).mean()) < 0.02


# ---- the whole pipeline ----------------------------------------------------------------------------------------------

def test_the_batch_version_is_built_from_the_per_image_steps_and_their_parameters():
    """Each step is defined once (vit.transforms.train_transform): BatchAugment.from_transform reads its parameters,
    so a change there reaches the batches on the device too, and a step without a batch version is refused."""
    transform = train_transform(16, MEAN, STD, scale=(0.5, 0.9), trivial_augment=0.3, erase_p=0.1)
    built = BatchAugment.from_transform(transform)
    assert (built.image_size, built.scale, built.trivial_augment, built.erase_p, built.flip_p) == (16, (0.5, 0.9), 0.3,
                                                                                                  0.1, 0.5)
    assert torch.allclose(built.shift, BatchAugment(16, MEAN, STD).shift)  # Normalize's mean and std
    batch, sizes = padded([noise(3, 20, 28, seed=s) for s in range(8)])
    direct = BatchAugment(16, MEAN, STD, scale=(0.5, 0.9), trivial_augment=0.3, erase_p=0.1)
    assert torch.equal(built(batch, sizes, torch.Generator().manual_seed(1)),
                       direct(batch, sizes, torch.Generator().manual_seed(1)))
    assert BatchAugment.from_transform(train_transform(16, MEAN, STD, trivial_augment=0.0)).trivial_augment == 0.0
    with pytest.raises(ValueError, match="no batch version of ColorJitter; add one, or augment per image"):
        BatchAugment.from_transform(v2.Compose([*transform.transforms, v2.ColorJitter(0.2)]))



def test_samples_get_independent_parameters():
    batch, sizes = padded([noise(3, 24, 32)] * 16)
    torch.manual_seed(0)
    out = BatchAugment(16, MEAN, STD)(batch, sizes)
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(16) for j in range(i + 1, 16))


def test_same_seed_same_batch():
    batch, sizes = padded([noise(3, 20, 28, seed=s) for s in range(8)])
    augment = BatchAugment(16, MEAN, STD)
    torch.manual_seed(5)
    a = augment(batch, sizes)
    torch.manual_seed(5)
    assert torch.equal(a, augment(batch, sizes))
    b = augment(batch, sizes, generator=torch.Generator().manual_seed(5))
    assert torch.equal(b, augment(batch, sizes, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(b, augment(batch, sizes, generator=torch.Generator().manual_seed(6)))


def test_flip():
    batch, sizes = padded([noise(3, 16, 16, seed=s) for s in range(4)])
    straight = plain(16, scale=(1.0, 1.0))(batch, sizes)
    torch.testing.assert_close(plain(16, scale=(1.0, 1.0), flip_p=1.0)(batch, sizes), straight.flip(-1))


def test_erasing_fraction_and_value():
    n = 2000
    batch, sizes = padded([torch.full((3, 16, 16), 128, dtype=torch.uint8)] * n)
    torch.manual_seed(0)
    out = plain(16, scale=(1.0, 1.0), erase_p=0.25)(batch, sizes)
    erased = (out == 0).all(1)  # (n, 16, 16): erased pixels are 0 in every channel, the rest are not
    assert ((out == 0) == erased[:, None]).all()
    hit = erased.flatten(1).any(1)
    assert abs(hit.float().mean() - 0.25) < 0.04
    areas = erased[hit].flatten(1).sum(1) / 256
    assert areas.min() >= 1 / 256 and areas.max() < 0.45 and abs(areas.mean() - 0.175) < 0.04
    rows, cols = erased.any(2), erased.any(1)  # each erased region is one rectangle
    assert torch.equal(erased.flatten(1).sum(1), rows.sum(1) * cols.sum(1))


def test_statistics_match_train_transform():
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    images = [torch.stack([x * 5, y * 6, 128 + 100 * torch.sin(x / 5 + k)]).round().to(torch.uint8)[:, :32 + k % 9,
              :40 + k % 7] for k in range(32)]
    torch.manual_seed(0)
    per_sample = torch.stack([train_transform(24, MEAN, STD)(images[i % 32]) for i in range(512)])
    batch, sizes = padded(images * 16)
    batched = BatchAugment(24, MEAN, STD)(batch, sizes)
    for a, b, tol in ((per_sample, batched, 0.1), (per_sample == 0, batched == 0, 0.03)):  # 3 sigma; 0: erased
        assert (a.float().mean((0, 2, 3)) - b.float().mean((0, 2, 3))).abs().max() < tol
        assert (a.float().std((0, 2, 3)) - b.float().std((0, 2, 3))).abs().max() < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    batch, sizes = padded([noise(3, 24, 20 + 4 * s, seed=s) for s in range(32)])
    augment = BatchAugment(16, MEAN, STD)
    cpu = augment(batch, sizes, generator=torch.Generator().manual_seed(0))
    cuda = augment(batch.cuda(), sizes.cuda(), generator=torch.Generator().manual_seed(0)).cpu()
    assert ((levels(cpu) - levels(cuda)).abs() > 2.01).float().mean() < 0.002


# ---- DeviceImages and DeviceLoader -----------------------------------------------------------------------------------

def decoded(n):
    """n tiny images of varying sizes, labelled with their own index."""
    images = [noise(3, 6 + i % 3, 6 + i % 4, seed=i) for i in range(n)]
    return Decoded(images, list(range(n)), [f"{i}.png" for i in range(n)])


def test_a_panorama_that_pads_every_image_past_the_memory_is_named(monkeypatch):
    d = decoded(7)
    d.images.append(torch.zeros(3, 6, 600, dtype=torch.uint8))  # a panorama: every image padded to 600 px wide
    d.paths.append("pano.png")
    monkeypatch.setattr(vit.augment, "physical_memory", lambda: 4 * 8 * 3 * 8 * 9)  # the 7 alone take a quarter
    assert too_large(decoded(7), "cpu") is None
    assert too_large(d, "cpu") == ("the training images padded to 8 x 600 px (by 2.png and pano.png) would take "
                                   "0 MiB, over 25% of this machine's memory")


def test_device_images_pad_and_gather():
    d = decoded(7)
    data = DeviceImages(d, "cpu")
    assert data.images.shape == (7, 3, 8, 9) and len(data) == 7 and padded_bytes(d) == data.images.numel()
    images, sizes, labels = data.batch(torch.tensor([5, 2]))
    assert labels.tolist() == [5, 2] and sizes.tolist() == [list(d.images[5].shape[1:]), list(d.images[2].shape[1:])]
    h, w = d.images[5].shape[1:]
    assert torch.equal(images[0, :, :h, :w], d.images[5]) and images[0, :, h:].eq(0).all()


def epoch_labels(loader):
    """The labels of one epoch, and the batch shapes."""
    batches = list(loader)
    return torch.cat([labels for _, labels in batches]).tolist(), [tuple(x.shape) for x, _ in batches]


def test_loader_covers_every_index_once_per_epoch():
    loader = DeviceLoader(decoded(10), plain(8), 4, "cpu", torch.Generator().manual_seed(0))
    assert len(loader) == 3
    first, shapes = epoch_labels(loader)
    assert sorted(first) == list(range(10)) and shapes == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    second, _ = epoch_labels(loader)
    assert sorted(second) == list(range(10)) and second != first  # a new order every epoch
    loader.generator.manual_seed(0)
    assert epoch_labels(loader)[0] == first  # the caller's seed fixes the order
    assert len(DeviceLoader(decoded(10), plain(8), 4, "cpu", torch.Generator(), drop_last=True)) == 2


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_batches_are_the_same_augmented_one_or_several_at_a_time(drop_last):
    per_batch = 4 * 3 * 8 * 9  # floats in 4 padded images
    loaders = [DeviceLoader(decoded(11), plain(8), 4, "cpu", torch.Generator().manual_seed(0), drop_last=drop_last,
                            floats_per_call=limit) for limit in (1, 2 * per_batch, 10**9)]
    assert [loader.batches_per_call for loader in loaders] == [1, 2, 10**9 // per_batch]
    epochs = [epoch_labels(loader) for loader in loaders]
    assert epochs[0] == epochs[1] == epochs[2]  # same order, same batch shapes
    assert epochs[0][1] == [(4, 3, 8, 8)] * 2 + ([] if drop_last else [(3, 3, 8, 8)])


@pytest.mark.parametrize("n", [10, 11])
def test_loader_shards_across_ranks(n):
    shards = []
    for rank in range(2):
        loader = DeviceLoader(decoded(n), plain(8), 4, "cpu", torch.Generator().manual_seed(1), world_size=2, rank=rank)
        labels, _ = epoch_labels(loader)
        assert len(labels) == math.ceil(n / 2) and len(loader) == math.ceil(math.ceil(n / 2) / 4)
        shards.append(labels)
    assert set(shards[0] + shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) == n % 2  # disjoint but for the one index padding repeats
    own = [shard[:own_share(n, 2, rank)] for rank, shard in enumerate(shards)]  # what train_epoch counts
    assert sorted(own[0] + own[1]) == list(range(n))  # the repeat ends a share: without it, each index once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_never_wait_for_the_gpu():
    """Every copy to the GPU is asynchronous, so the CPU prepares the next batch while the model trains."""
    images = [noise(3, 20 + i % 5, 20 + i % 7, seed=i) for i in range(64)]
    d = Decoded(images, list(range(64)), [f"{i}.png" for i in range(64)])
    loader = DeviceLoader(d, BatchAugment(16, MEAN, STD).cuda(), 32, torch.device("cuda"), torch.Generator())
    next(iter(loader))  # the first batch may allocate pinned memory
    torch.cuda.set_sync_debug_mode("error")  # any wait for the GPU raises
    try:
        batches = [x for _ in range(3) for x, _ in loader]  # 192 images: every TrivialAugment op drawn
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(batches) == 6 and all(x.shape == (32, 3, 16, 16) and x.is_cuda for x in batches)


@pytest.mark.parametrize("path", ["per-sample", "batched"])
def test_trivial_augment_probability_is_the_share_of_images_changed(path):
    n, image = 600, torch.full((3, 20, 20), 100, dtype=torch.uint8)  # crops, flips: all leave it as it is

    def changed(p):
        torch.manual_seed(0)
        if path == "per-sample":
            transform = train_transform(16, MEAN, STD, trivial_augment=p, erase_p=0.0)
            out = torch.stack([transform(image) for _ in range(n)])
        else:
            out = BatchAugment(16, MEAN, STD, trivial_augment=p, erase_p=0.0)(*padded([image] * n))
        return ((levels(out) - 100).abs() > 0.5).flatten(1).any(1).float().mean().item()

    always = changed(1.0)
    assert changed(0.0) == 0.0 and always > 0.3
    assert abs(changed(0.5) - always / 2) < 0.06  # 3 sigma of a binomial share over 600 images
