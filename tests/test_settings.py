"""A run's settings (vit/settings.py): built once from recipe, flags and weights, read-only, saved as plain data,
resumed with only the flags that may change, and rebuilt from a checkpoint of the earlier format."""
import dataclasses

import pytest

import train
from vit.errors import UserError
from vit.settings import (MOVABLE, NAMES, RESUMABLE, as_data, describe, new_settings, resumed_settings,
                          saved_settings)

GIVEN = {"data": "/photos", "epochs": 3, "cache_dir": "/cache", "name": "run"}


def test_built_from_the_recipe_then_the_flags_given_then_the_weights_model():
    settings = new_settings(train.PHOTOS, GIVEN)
    assert (settings.epochs, settings.lr, settings.batch_size) == (3, train.PHOTOS["lr"], train.PHOTOS["batch_size"])
    assert (settings.model, settings.image_size, settings.patch_size, settings.num_layers) == ("vit_ti_16", 64, 8, 6)
    # sizes the recipe leaves open come from the Table 1 model (vit_ti_16: 12 layers), or the weights' image size
    assert new_settings(train.SCRATCH, GIVEN).num_layers == 12
    own = {"model": "vit_ti_16", "patch_size": 4, "num_layers": 2, "stem": "conv"}
    tuned = new_settings(train.TRANSFER, dict(GIVEN, pretrained="models/pre.pt"), own, image_size=16)
    assert (tuned.image_size, tuned.patch_size, tuned.num_layers, tuned.stem) == (16, 4, 2, "conv")
    assert new_settings(train.FINETUNE, dict(GIVEN, pretrained=True), image_size=None).image_size == 224


def test_a_flag_that_contradicts_the_weights_is_one_line():
    own = {"model": "vit_ti_16", "patch_size": 4, "num_layers": 2, "stem": "conv"}
    with pytest.raises(UserError, match=r"^models/pre.pt: weights for --model vit_ti_16 --patch-size 4 --num-layers 2 "
                                        r"--stem conv, not --stem patch; leave out --stem: the model is built"):
        new_settings(train.TRANSFER, dict(GIVEN, pretrained="models/pre.pt", stem="patch"), own, image_size=16)


def test_read_only_and_saved_as_plain_data_that_gives_the_same_settings_back():
    settings = new_settings(train.PHOTOS, GIVEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lr = 1.0
    data = as_data(settings)
    assert set(data) == set(NAMES) and all(isinstance(v, (str, int, float, bool, type(None))) for v in data.values())
    assert saved_settings({"settings": data}) == settings
    assert describe(settings).startswith("settings: data=/photos, pretrained=None, freeze=False, model=vit_ti_16")
    with pytest.raises(UserError, match=r"^run.pt: settings this version does not know \(colour\); update"):
        saved_settings({"settings": dict(data, colour="red"), "path": "run.pt"})


def test_resume_takes_only_the_flags_that_may_change_and_names_the_others(tmp_path):
    saved = new_settings(train.PHOTOS, dict(GIVEN, stop_after=1))
    given = {"resume": str(tmp_path / "models" / "run.pt"), "device": "cpu", "threads": 1, "data": "/moved",
             "lr": 1.0, "epochs": 3, "stop_after": None}
    resumed, ignored = resumed_settings(saved, given, given["resume"])
    assert (resumed.device, resumed.threads, resumed.data) == ("cpu", 1, "/moved")  # RESUMABLE and MOVABLE
    assert resumed.lr == saved.lr and ignored == ["lr"]  # --epochs 3 is the run's own: not named
    assert resumed.stop_after is None  # always this session's, given or not
    assert resumed.out_dir == str(tmp_path.resolve())  # its files stay beside the checkpoint
    assert set(RESUMABLE) | set(MOVABLE) < set(NAMES)


def test_a_checkpoint_of_the_earlier_format_gives_its_settings():
    """Format 1 saved train.py's arguments, with sizes the model filled in left as None and flags it did not have."""
    args = {**new_settings(train.SCRATCH, GIVEN).__dict__, "num_layers": None, "given": ["data"], "resume": None}
    del args["trivial_augment"], args["threads"]  # flags added since
    config = {"image_size": 32, "patch_size": 8, "num_layers": 12, "stem": "conv"}
    settings = saved_settings({"format": "vit-checkpoint-1", "args": args, "model": {"config": config}})
    assert settings.num_layers == 12 and settings.trivial_augment == 1.0 and settings.threads is None
    assert saved_settings({"format": "vit-checkpoint-1", "model": {"config": config}}) is None  # a model alone
