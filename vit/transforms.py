"""The images' transforms, each defined once: training augmentation per image (vit.augment derives its batch version
from it), evaluation preprocessing, and Mixup/CutMix of whole batches."""
import torch
from torchvision.transforms import v2



def train_transform(image_size, mean, std, *, scale=(0.35, 1.0), trivial_augment=1.0, erase_p=0.25):
    """Per-sample training augmentation of a uint8 tensor or PIL image -> normalised float tensor (3, S, S).

    trivial_augment: the probability that an image gets a TrivialAugmentWide op (0: the step is left out).
    """
    trivial = v2.TrivialAugmentWide() if trivial_augment >= 1 else v2.RandomApply([v2.TrivialAugmentWide()],
                                                                                   p=trivial_augment)
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        *([trivial] if trivial_augment > 0 else []),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
        v2.RandomErasing(p=erase_p),
        v2.ToPureTensor(),
    ])


def eval_transform(preprocess, normalise=True):
    """Evaluation preprocessing (resize shorter side, center crop, normalise) from a model.preprocess dict.

    normalise=False stops at the uint8 crop, for eval_normalise to finish whole batches on the device.
    """
    return v2.Compose([
        v2.Resize(preprocess["resize_size"], v2.InterpolationMode(preprocess["interpolation"]), antialias=True),
        v2.CenterCrop(preprocess["crop_size"]),
        v2.ToImage(),
        *([eval_normalise(preprocess)] if normalise else []),
        v2.ToPureTensor(),
    ])


def eval_normalise(preprocess):
    """uint8 image or batch -> float, scaled to [0, 1] and normalised with the model's mean and std."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess["mean"], preprocess["std"])])


def mixing(num_classes, p=1.0, mixup_alpha=0.8, cutmix_alpha=1.0):
    """Mixup or CutMix of a whole batch (half the batches each), applied with probability p: torchvision's, called
    as mix(images, labels) -> (mixed images, soft targets), or (images, labels) unchanged where not applied."""
    choices = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes),
               v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)]
    return v2.RandomApply([v2.RandomChoice(choices)], p=p)
