"""A run's settings: one read-only object, built once by train.py from the recipe, the flags given and, on --resume or
transfer, the checkpoint; printed once at the start and saved in every checkpoint as plain data (FORMAT)."""
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from vit.errors import UserError
from vit.model import CONFIGS

FORMAT = "vit-checkpoint-2"  # checkpoints hold asdict(Settings) as "settings"; format 1 held train.py's arguments
FORMATS = ("vit-checkpoint-1", FORMAT)  # the formats this code reads


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of a run (train.py --help says what each flag does)."""
    # what the run learns from and starts from
    data: str                   # the dataset folder, resolved
    pretrained: object = None   # None: random weights; True: torchvision's ImageNet weights; a path: weights or a run
    freeze: bool = False        # train a new head only, on frozen pretrained features
    # the model: a Table 1 name and the sizes train.py may change (vit.model.SHAPE_FLAGS), all resolved
    model: str
    image_size: int
    patch_size: int
    num_layers: int
    stem: str
    # the optimisation: the recipe's unless given
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    drop_path: float
    trivial_augment: float
    mixup: float
    clip_grad: float
    seed: int = 0
    # the machine: speed, not results; a resumed run takes this session's where given (RESUMABLE)
    device: str = "auto"
    threads: int = None         # None: PyTorch's (one per core)
    workers: int = None         # None: 0 on a CPU, min(8, cores) on a GPU
    augment: str = "auto"
    precision: str = "auto"
    compile: str = None
    stop_after: int = None      # this session's epochs (None: all)
    # the run's files
    name: str = ""
    out_dir: str = "."
    cache_dir: str = ""


RESUMABLE = ("device", "threads", "workers", "augment", "precision", "compile", "stop_after")  # --resume: given wins
MOVABLE = ("data", "cache_dir")  # --resume: given where the images or the cache have moved
MODEL_FLAGS = ("model", "patch_size", "num_layers", "stem")  # fixed by pretrained weights
NAMES = tuple(f.name for f in fields(Settings))


def flags(keys):
    """Setting names as typed on the command line: ("cache_dir", "lr") -> '--cache-dir, --lr'."""
    return ", ".join("--" + k.replace("_", "-") for k in keys)


def new_settings(recipe, given, own=None, image_size=None):
    """A new run's settings: `recipe`'s values, the flags `given` over them, then `own`, the model flags that
    pretrained weights fix (a given flag that contradicts them is refused), and the sizes still open from the Table 1
    model (image_size: the weights' own, else 224)."""
    own = own or {}
    clash = [k for k, v in own.items() if k in given and given[k] != v]
    if clash:
        raise UserError(f"{given['pretrained']}: weights for {' '.join(f'{flags([k])} {v}' for k, v in own.items())}, "
                        f"not {' '.join(f'{flags([k])} {given[k]}' for k in clash)}; leave out {flags(clash)}: the "
                        "model is built from the weights")
    values = {**recipe, **given, **own}
    if values["model"] not in CONFIGS:
        raise UserError(f"--model {values['model']}: unknown; choose one of {', '.join(CONFIGS)}")
    patch, depth = CONFIGS[values["model"]][:2]
    table1 = dict(image_size=image_size or 224, patch_size=patch, num_layers=depth, stem="patch")
    values.update({k: v for k, v in table1.items() if values.get(k) is None})
    return Settings(**{k: v for k, v in values.items() if k in NAMES})


def saved_settings(ckpt):
    """The Settings a checkpoint of a run holds (format 2), or those rebuilt from format 1's arguments; None for a
    checkpoint of a model alone."""
    if "settings" in ckpt:
        unknown = set(ckpt["settings"]) - set(NAMES)
        if unknown:
            raise UserError(f"{ckpt.get('path', 'checkpoint')}: settings this version does not know "
                            f"({', '.join(sorted(unknown))}); update the project (git pull) to resume it")
        return Settings(**ckpt["settings"])
    if not isinstance(ckpt.get("args"), dict):
        return None
    args = {"trivial_augment": 1.0, **ckpt["args"]}  # format 1 runs saved before that flag used it on every image
    config = ckpt["model"]["config"]  # the model as built (format 1 could leave sizes to the model)
    resolved = {k: config[k] for k in ("image_size", "patch_size", "num_layers", "stem")}
    return Settings(**{**{k: v for k, v in args.items() if k in NAMES}, **resolved})


def resumed_settings(saved, given, checkpoint):
    """--resume's settings: the run's own, except the flags of RESUMABLE and MOVABLE that this command line gives
    (stop_after is always this session's), its files beside `checkpoint` (run_files) -> (settings, the given flags
    that the run does not take, where their value differs from its own)."""
    taken = {k: v for k, v in given.items() if k in RESUMABLE + MOVABLE}
    out_dir = str(Path(checkpoint).resolve().parent.parent)  # run_files' OUT of OUT/models/RUN.pt
    settings = replace(saved, **{**taken, "stop_after": given.get("stop_after"), "out_dir": out_dir})
    ignored = [k for k, v in given.items() if k in NAMES and k not in taken and v != getattr(saved, k)]
    return settings, ignored


def as_data(settings):
    """The settings as plain data, for a checkpoint."""
    return asdict(settings)


def describe(settings):
    """One line of every setting, as printed at the start of a run."""
    return "settings: " + ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
