"""The model matches torchvision's exactly, loads weights safely and fails clearly."""
import os
import pickle
import re
import time
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer as TorchvisionViT
from torchvision.models.vision_transformer import interpolate_embeddings

import vit.weights
from vit import UserError, build_model, list_models
from vit.model import CONFIGS, PatchEmbedding, VisionTransformer

SMALL = dict(image_size=64, patch_size=8, num_layers=3, num_heads=4, hidden_dim=96, mlp_dim=192)


def torchvision_model(name, num_classes=1000):
    if name == "small":
        return TorchvisionViT(**SMALL, num_classes=num_classes)
    if name == "vit_s_16":  # DeiT-Small: no torchvision builder, same class
        return TorchvisionViT(224, 16, 12, 6, 384, 1536, num_classes=num_classes)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def randomise(model):
    """torchvision zero-initialises the head and class token; fill every tensor so the test can fail."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    return model


def sharpen(model):
    """randomise's weights give near-uniform attention and logits of about 0.05, where the attention's details hardly
    show: LayerNorm gains about 1 (unit-sized inputs to every layer) and 4x larger q/k/v weights (peaked attention;
    compare in float64, float32's rounding grows through such layers)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.add_(1.0)
            if name.endswith("in_proj_weight"):
                p.mul_(4.0)
    return model


@pytest.mark.parametrize("name", ["small", "vit_b_32", "vit_b_16"])
def test_same_logits_as_torchvision(name, tmp_path):
    tv = randomise(torchvision_model(name, num_classes=10)).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    if name == "small":
        ours = build_model("vit_b_16", num_classes=10, pretrained=path, **SMALL).eval()
    else:
        ours = build_model(name, num_classes=10, pretrained=path).eval()
    size = ours.image_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = tv(x)
        fast = ours(x)
        explicit, attns = ours(x, return_attn=True)
    assert (fast - expected).abs().max() <= 1e-4
    assert (explicit - expected).abs().max() <= 1e-4
    n = ours.grid_size ** 2 + 1
    assert len(attns) == ours.config["num_layers"] and attns[0].shape == (2, ours.config["num_heads"], n, n)
    assert torch.allclose(attns[0].sum(-1), torch.ones(()), atol=1e-5)


def test_same_function_as_torchvision_where_attention_is_peaked(tmp_path):
    """In float64, to rounding: small differences (LayerNorm's eps, the attention's scale) show here, where in the
    float32 test above they are within its tolerance."""
    tv = sharpen(randomise(torchvision_model("small", num_classes=10))).double().eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = build_model("vit_b_16", num_classes=10, pretrained=tmp_path / "tv.pth", **SMALL).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected, fast = tv(x), ours(x)
        explicit, attns = ours(x, return_attn=True)
    scale = expected.abs().max()
    assert scale > 1 and min(a.amax() for a in attns) > 0.5  # sizes where a difference would show
    assert (fast - expected).abs().max() <= 1e-9 * scale and (explicit - expected).abs().max() <= 1e-9 * scale
    # eps is too small to change these logits measurably, but it is part of the function (weights trained with 1e-6)
    norms = [(type(m), m.eps) for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms == [(type(m), m.eps) for m in tv.modules() if isinstance(m, torch.nn.LayerNorm)]


def test_parameter_counts_equal_torchvision():
    assert sum(p.numel() for p in build_model("vit_b_16").parameters()) == 86_567_656
    for name in ("vit_b_32", "vit_s_16"):
        ours = sum(p.numel() for p in build_model(name, num_classes=7).parameters())
        assert ours == sum(p.numel() for p in torchvision_model(name, num_classes=7).parameters())
    assert set(list_models()) == set(CONFIGS) >= {"vit_ti_16", "vit_s_16", "vit_h_14"}


def test_every_table1_count_at_224_px_equals_torchvisions():
    """README's table: every name torchvision builds (ViT-L and ViT-H too) has its parameter count, 1000 classes at
    224 px; on the meta device, so that no memory is taken for the weights."""
    with torch.device("meta"):
        for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"):
            ours = sum(p.numel() for p in build_model(name).parameters())
            assert ours == sum(p.numel() for p in torchvision_model(name).parameters()), name


def test_patch_embedding_is_the_strided_convolution_of_its_weight():
    """Eq. 1's x_p E, computed as one matrix product over flattened patches: the stride-p convolution's
    numbers, and the same gradient for E."""
    torch.manual_seed(0)
    embed = PatchEmbedding(32, 8, 48)
    x, cotangent = torch.randn(2, 3, 32, 32), torch.randn(2, 16, 48)
    tokens = (embed(x) - embed.pos_embed)[:, 1:]
    convolved = embed.proj(embed.stem(x)).flatten(2).transpose(1, 2)  # (B, N, D), patches in raster order
    assert tokens.shape == convolved.shape == (2, 16, 48)
    assert (tokens - convolved).abs().max() <= 1e-5
    grads = [torch.autograd.grad((t * cotangent).sum(), embed.proj.weight)[0] for t in (tokens, convolved)]
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[1].abs().max()


def test_default_preprocessing_is_imagenets():
    """A model built without weights that say otherwise normalises as torchvision's ImageNet ViTs do (the same
    numbers for a plain state dict of ours that carries no preprocessing), resizing to 256/224 of the crop."""
    imagenet = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    assert build_model("vit_ti_16", image_size=32, patch_size=8, num_layers=1).preprocess == dict(
        resize_size=37, crop_size=32, mean=list(imagenet.mean), std=list(imagenet.std), interpolation="bilinear")


def test_features_and_head_are_separate():
    model = randomise(build_model("vit_ti_16", num_classes=5, **dict(SMALL, hidden_dim=48, num_heads=3))).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (3, 48)
        assert torch.allclose(model.head(features), model(x))


def test_pretrained_true_loads_from_torch_home_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ViT_B_16_Weights.DEFAULT
    cache = tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url)
    cache.parent.mkdir(parents=True)
    tv = randomise(torchvision.models.vit_b_16())
    torch.save(tv.state_dict(), cache)

    def offline(*args, **kwargs):
        raise AssertionError("no download may be attempted when the file is cached")
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    model = build_model("vit_b_16", num_classes=3, pretrained=True)
    ours = model.state_dict()
    renamed = vit.weights.from_torchvision(tv.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in renamed.items() if not k.startswith("head."))
    assert model.head.out_features == 3 and model.classes is None
    assert model.weights_from == "torchvision ViT_B_16_Weights.IMAGENET1K_V1"  # what train.py's log names
    assert model.preprocess == dict(resize_size=256, crop_size=224, mean=[0.485, 0.456, 0.406],
                                    std=[0.229, 0.224, 0.225], interpolation="bilinear")
    full = build_model("vit_b_16", pretrained=True)  # 1000 classes: the head and class names come along
    assert torch.equal(full.head.weight, tv.heads.head.weight)
    assert len(full.classes) == 1000 and full.classes[0] == "tench"


def test_a_copy_of_torchvisions_weights_brings_their_classes_and_preprocessing(tmp_path):
    """pretrained=PATH with torchvision's ImageNet file (here a small stand-in of its shapes' kind): the classes and
    preprocessing of the weights with its head and image size, as pretrained=True would give."""
    for size, resize, interpolation in ((224, 256, "bilinear"), (384, 384, "bicubic")):  # IMAGENET1K_V1, SWAG_E2E
        path = tmp_path / f"vit_b_16_{size}.pth"
        torch.save(TorchvisionViT(image_size=size, patch_size=16, num_layers=1, num_heads=3, hidden_dim=192,
                                  mlp_dim=768).state_dict(), path)
        found = vit.weights.open_weights(path)
        assert found.classes[:2] == ["tench", "goldfish"] and len(found.classes) == 1000
        assert (found.preprocess["crop_size"], found.preprocess["resize_size"]) == (size, resize)
        assert found.preprocess["interpolation"] == interpolation
    torch.save(TorchvisionViT(**SMALL, num_classes=5).state_dict(), tmp_path / "five.pth")  # not ImageNet's head
    found = vit.weights.open_weights(tmp_path / "five.pth")
    assert found.classes is None and found.preprocess is None


def test_pretrained_true_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    start = time.time()
    with pytest.raises(UserError) as err:
        build_model("vit_b_16", pretrained=True)
    assert time.time() - start < 10
    expected = tmp_path / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    assert str(expected) in str(err.value) and "pretrained=PATH" in str(err.value)


def test_no_torchvision_weights_for_tiny_is_a_clear_error():
    with pytest.raises(UserError, match="no ImageNet weights for vit_ti_16"):
        build_model("vit_ti_16", pretrained=True)


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["EXPLOIT_MARKER"]),))


def test_a_file_that_is_not_a_pytorch_file_is_named_so(tmp_path):
    """An image, text or empty file given as weights: not called 'pickled objects', which it does not hold; a
    torch.save file cut short: damaged."""
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "notes.pt").write_text("hello")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("photo.png", "notes.pt", "empty.pth"):
        with pytest.raises(UserError, match=r"not a PyTorch file \(an image, text or an incomplete download\?\)"):
            build_model("vit_ti_16", pretrained=tmp_path / name)
    torch.save(build_model("vit_ti_16", num_layers=1).state_dict(), tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:1000])
    with pytest.raises(UserError, match="cut.pth: cannot be read as a PyTorch file .*damaged, incomplete"):
        build_model("vit_ti_16", pretrained=tmp_path / "cut.pth")
    with pytest.raises(UserError, match=f"^{tmp_path}: a folder, not a file; pass the weights file or checkpoint"):
        build_model("vit_ti_16", pretrained=tmp_path)


def test_pickled_code_is_refused_and_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv_proj.weight": Exploit()}, f)
    torch.save({"x": Exploit()}, tmp_path / "evil_zip.pth")
    marker.unlink(missing_ok=True)  # torch.save does not run __reduce__'s call, but be sure
    for p in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(UserError, match="pickled Python objects"):
            build_model("vit_ti_16", pretrained=p)
    assert not marker.exists()


def test_weights_for_another_model_name_the_keys(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(TorchvisionViT(**SMALL).state_dict(), path)
    with pytest.raises(UserError, match=r"of another shape.*embed.proj.weight.*; they are 96 wide: build the model "
                                        "with hidden_dim=96$"):
        build_model("vit_ti_16", pretrained=path, image_size=64, patch_size=8, num_layers=3)
    with pytest.raises(UserError, match=r"of another shape.*embed.proj.weight.*; their patches are 8 px: build the "
                                        r"model with patch_size=8 \(--patch-size\)$"):
        build_model("vit_ti_16", pretrained=path, **dict(SMALL, patch_size=16))
    b32 = tmp_path / "b32.pth"
    torch.save(build_model("vit_b_32", num_layers=1).state_dict(), b32)
    with pytest.raises(UserError, match=r"their patches are 32 px: build the model with patch_size=32"):
        build_model("vit_b_16", pretrained=b32, num_layers=1)
    with pytest.raises(UserError, match=r"they are 768 wide: build vit_b_32 with num_layers=1 "
                                        r"\(--model vit_b_32 --num-layers 1\)$"):
        build_model("vit_ti_16", pretrained=b32, num_layers=1, patch_size=32)
    with pytest.raises(UserError, match=r"missing: blocks.3.*; they have 3 layers: build the model with num_layers=3 "
                                        r"\(--num-layers\)$"):
        build_model("vit_b_16", pretrained=path, **dict(SMALL, num_layers=4))
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(UserError, match="junk.pth"):
        build_model("vit_ti_16", pretrained=tmp_path / "junk.pth")
    with pytest.raises(UserError, match="no such file"):
        build_model("vit_ti_16", pretrained=tmp_path / "absent.pth")


def test_position_embeddings_follow_the_image_size(tmp_path):
    """Sec. 3.2: at another image size the pretrained position embeddings are interpolated over the patch grid as
    torchvision's interpolate_embeddings does (bicubic, corners aligned), so the model is still torchvision's."""
    tv = randomise(TorchvisionViT(**SMALL, num_classes=5))
    path = tmp_path / "small.pth"
    torch.save(tv.state_dict(), path)
    same = build_model("vit_b_16", num_classes=5, pretrained=path, **SMALL)
    assert torch.equal(same.embed.pos_embed, tv.encoder.pos_embedding)
    for size in (96, 40):  # 8 x 8 patches to 12 x 12, and to 5 x 5
        model = build_model("vit_b_16", num_classes=5, pretrained=path, **dict(SMALL, image_size=size)).eval()
        expected = interpolate_embeddings(size, 8, OrderedDict(tv.state_dict()))
        assert model.embed.pos_embed.shape == (1, (size // 8) ** 2 + 1, 96) and model.preprocess["crop_size"] == size
        assert (model.embed.pos_embed - expected["encoder.pos_embedding"]).abs().max() <= 1e-6
        theirs = TorchvisionViT(**dict(SMALL, image_size=size), num_classes=5).eval()
        theirs.load_state_dict(expected)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert (model(x) - theirs(x)).abs().max() <= 1e-5


def test_vit_b_16_from_224_to_384(tmp_path):
    path = tmp_path / "b16.pth"
    torch.save(torchvision.models.vit_b_16().state_dict(), path)
    model = build_model("vit_b_16", num_classes=3, image_size=384, pretrained=path).eval()
    assert model.embed.pos_embed.shape == (1, 24 * 24 + 1, 768)
    # the weights' preprocessing (resize 256, crop 224) scaled to the new size, not a 384 px crop of a 256 px image
    assert model.preprocess == dict(resize_size=round(256 * 384 / 224), crop_size=384, mean=[0.485, 0.456, 0.406],
                                    std=[0.229, 0.224, 0.225], interpolation="bilinear")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 3)


def test_wrong_input_is_a_clear_error():
    model = build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=1)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\), got \(1, 3, 48, 48\); "
                                         "resize the images or build the model with image_size=48$"):
        model(torch.randn(1, 3, 48, 48))
    for shape in ((1, 1, 32, 32), (1, 1, 64, 64), (3, 32, 32)):  # a wrong channel count is not a wrong size
        with pytest.raises(ValueError, match=rf"got {re.escape(str(shape))}; give a batch of RGB images$"):
            model(torch.randn(*shape))
    with pytest.raises(ValueError, match=r"got \(1, 3, 32, 48\); resize and crop them to 32 x 32 px, e.g. with "
                                         r"vit.transforms.eval_transform\(model.preprocess\)$"):
        model(torch.randn(1, 3, 32, 48))
    with pytest.raises(ValueError, match="expected float images, got torch.uint8; scale and normalise"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model("vit_ti_16", image_size=30)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit_x_16")


def test_drop_path_keeps_the_mean_and_grows_linearly_with_depth():
    """Stochastic depth drops a sample's whole branch with probability p and scales the kept ones by 1 / (1 - p), so
    that the expected output is the branch (what eval mode gives); the rate grows from 0 to drop_path over depth."""
    model = build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=4, drop_path=0.3)
    assert [block.drop_path.p for block in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    torch.manual_seed(0)
    out = model.blocks[-1].drop_path.train()(torch.ones(20_000, 2, 3))
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert torch.equal(out.amin((1, 2)), out.amax((1, 2)))  # each sample's branch as a whole
    assert abs(out.mean().item() - 1.0) < 0.02 and abs((out == 0).float().mean().item() - 0.3) < 0.02


def test_drop_path_only_in_training():
    model = randomise(build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=4,
                                  drop_path=0.5))
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))


def test_checkpoint_with_a_broken_model_description_is_refused(tmp_path):
    from vit.checkpoint import load_checkpoint, model_checkpoint, model_from_checkpoint
    from vit.files import save_atomically
    model = build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=1)
    model.classes = ["a", "b"]
    # a fine-tuned model keeps its weights' preprocessing (here not the default of its size): predict.py uses it
    model.preprocess = dict(resize_size=32, crop_size=32, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic")
    good = model_checkpoint(model)
    save_atomically(good, tmp_path / "good.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "good.pt"))
    assert rebuilt.classes == ["a", "b"] and all(torch.equal(v, model.state_dict()[k])
                                                 for k, v in rebuilt.state_dict().items())
    assert rebuilt.preprocess == model.preprocess
    for name, broken in {"noconfig": dict(good, model={"name": "x"}),
                         "badsize": dict(good, model={"name": "x", "config": dict(model.config, image_size=30)}),
                         "deeper": dict(good, model={"name": "x", "config": dict(model.config, num_layers=2)})}.items():
        save_atomically(broken, tmp_path / f"{name}.pt")
        with pytest.raises(UserError, match=f"{name}.pt: .*damaged or was edited"):
            model_from_checkpoint(load_checkpoint(tmp_path / f"{name}.pt"))


def test_conv_stem_hybrid_builds_saves_and_refuses_patch_weights(tmp_path):
    from vit.checkpoint import load_checkpoint, model_checkpoint, model_from_checkpoint
    from vit.files import save_atomically
    torch.manual_seed(0)
    model = build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=1, stem="conv").eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.embed.stem(x).shape == (2, 96, 4, 4)  # three stride-2 stages: one position per 8 x 8 patch
    model.classes = ["a", "b"]
    ckpt = model_checkpoint(model)
    save_atomically(ckpt, tmp_path / "hybrid.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "hybrid.pt")).eval()
    tuned = build_model("vit_ti_16", num_classes=2, pretrained=tmp_path / "hybrid.pt", patch_size=8, num_layers=1,
                        stem="conv").eval()  # fine-tuning from it: the image size comes from the checkpoint
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x)) and torch.equal(tuned(x), model(x))
    path = tmp_path / "small.pth"
    torch.save(TorchvisionViT(**SMALL).state_dict(), path)
    with pytest.raises(UserError, match=r"missing: embed.stem.*; they are for the plain patch embedding: build the "
                                        r"model with stem='patch' \(--stem patch\)$"):
        build_model("vit_b_16", pretrained=path, stem="conv", **SMALL)
    with pytest.raises(ValueError, match="image_size 16 is one patch of 16 px; the conv stem needs at least 2 x 2"):
        build_model("vit_ti_16", image_size=16, stem="conv")  # batch norm of a 1 x 1 map fails on one image
    old = VisionTransformer(image_size=16, patch_size=16, num_layers=1, num_heads=3, hidden_dim=192, mlp_dim=768,
                            stem="conv")  # as models were built before that check: their checkpoints still load
    assert old.embed.grid_size == 1
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        build_model("vit_ti_16", image_size=36, patch_size=12, stem="conv")


def test_conv_stem_is_torchvisions_conv_stem_configs():
    """The hybrid's stem (Xiao et al. 2021) computes what torchvision's VisionTransformer(conv_stem_configs=...)
    does with the same weights, with batch statistics (training) and running ones (evaluation)."""
    ours = build_model("vit_ti_16", num_classes=5, image_size=32, patch_size=8, num_layers=1, stem="conv")
    widths = [m.out_channels for m in ours.embed.stem.layers if isinstance(m, torch.nn.Conv2d)]
    tv = randomise(TorchvisionViT(32, 8, 1, 3, 192, 768, num_classes=5,
                                  conv_stem_configs=[ConvStemConfig(w, 3, 2) for w in widths]))
    renamed = {}
    for key, value in tv.state_dict().items():  # conv_bn_relu_I.J -> stem.layers.(3I + J), conv_last -> proj
        key = re.sub(r"^conv_proj\.conv_bn_relu_(\d+)\.(\d)\.",
                     lambda m: f"embed.stem.layers.{3 * int(m.group(1)) + int(m.group(2))}.", key)
        renamed[re.sub(r"^conv_proj\.conv_last\.", "embed.proj.", key)] = value
    ours.load_state_dict(vit.weights.from_torchvision(renamed))
    x = torch.randn(4, 3, 32, 32)
    for training in (True, False):
        tv.train(training), ours.train(training)
        with torch.no_grad():
            assert (tv(x) - ours(x)).abs().max() <= 1e-5, training


def test_a_hybrids_plain_state_dict_names_its_model_and_what_to_change(tmp_path):
    model = build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=1, stem="conv").eval()
    path = tmp_path / "hybrid.pth"
    torch.save(model.state_dict(), path)  # no preprocessing saved: the image size comes from the shapes
    state = torch.load(path)
    assert vit.weights.table1_flags(state) == {"model": "vit_ti_16", "patch_size": 8, "num_layers": 1, "stem": "conv"}
    again = build_model("vit_ti_16", num_classes=2, pretrained=path, patch_size=8, num_layers=1, stem="conv").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert again.image_size == 32 and torch.equal(again(x), model(x))
    with pytest.raises(UserError, match=r"unexpected: embed.stem.*; they are for the conv stem: build the model with "
                                        r"stem='conv' \(--stem conv\)$"):
        build_model("vit_ti_16", num_classes=2, pretrained=path, patch_size=8, num_layers=1)
    with pytest.raises(UserError, match=r"they are 192 wide: build vit_ti_16 with patch_size=8, num_layers=1, stem="
                                        r"'conv' \(--model vit_ti_16 --patch-size 8 --num-layers 1 --stem conv\)$"):
        build_model("vit_s_16", num_classes=2, pretrained=path, patch_size=8, num_layers=1, stem="conv")


def test_a_pretrained_head_is_kept_only_for_the_same_class_names(tmp_path):
    """--pretrained RUN.pt on data of other classes, as many: the run's head scored burger as its pizza."""
    from vit.checkpoint import model_checkpoint
    from vit.files import save_atomically
    source = build_model("vit_ti_16", num_classes=2, image_size=32, patch_size=8, num_layers=1)
    torch.nn.init.normal_(source.head.weight)
    source.classes = ["pizza", "steak"]
    save_atomically(model_checkpoint(source), tmp_path / "run.pt")
    for classes, kept in ((["pizza", "steak"], True), (["burger", "pizza"], False), (None, True)):
        model = build_model("vit_ti_16", num_classes=2, pretrained=tmp_path / "run.pt", classes=classes, patch_size=8,
                            num_layers=1)
        assert torch.equal(model.head.weight, source.head.weight) == kept, classes
        assert model.classes == (classes or source.classes) and torch.equal(model.blocks[0].mlp.fc1.weight,
                                                                              source.blocks[0].mlp.fc1.weight)
