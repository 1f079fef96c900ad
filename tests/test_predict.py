"""predict.py end to end on a tiny checkpoint, attention rollout, and the classification metrics."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import predict as predict_script
import vit.checkpoint
import vit.weights
from vit import build_model
from vit.checkpoint import model_checkpoint
from vit.files import save_atomically
from vit.decoding import decode
from vit.transforms import eval_normalise, eval_transform
from vit.explain import attention_rollout, model_view, rollout
from vit.metrics import classification_report, confusion_matrix, evaluate
from vit.plots import FORMATS

REPO = Path(__file__).parents[1]
CLASSES = ["cat", "dog", "fish"]


def tiny_model(num_layers=2):
    """A 2-layer ViT-Ti on 32x32 images (4x4 patches of 8 pixels) with a random head, so classes differ."""
    torch.manual_seed(0)
    model = build_model("vit_ti_16", num_classes=len(CLASSES), image_size=32, patch_size=8, num_layers=num_layers)
    torch.nn.init.normal_(model.head.weight, std=2.0)  # the head starts at zero: every class would tie
    return model.eval()


def checkpoint(model):
    """A checkpoint dict as train.py writes it."""
    model.classes = CLASSES
    return {**model_checkpoint(model), "epoch": 1, "optimizer": {}, "scheduler": {}, "scaler": None, "metrics": [],
            "best_acc": 0.0, "args": {}, "git_commit": None}


def write_image(path, seed, size=(40, 30), mode="RGB"):
    """A random image file (format from the suffix)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(checkpoint path, the model it holds)."""
    model = tiny_model()
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_atomically(checkpoint(model), path)
    return path, model


def direct_probs(model, path):
    """The model called by hand on the image preprocessed as its checkpoint says."""
    x = eval_transform(model.preprocess)(decode(path, model.preprocess))
    with torch.no_grad():
        return model(x[None]).softmax(-1)[0]


def predict(*args, device="cpu"):
    """Run predict.py as a user would (on the CPU, where direct_probs computes the expected numbers)."""
    return subprocess.run([sys.executable, "predict.py", *map(str, args), "--device", device], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def predict_here(capsys, *args, device="cpu"):
    """predict.main in this process (no start-up cost), captured like predict()."""
    returncode = predict_script.main([str(a) for a in args] + ["--device", device])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, out, err)


def assert_clean_failure(result):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_folder_json_matches_model_with_figures_csv_and_attention(ckpt, tmp_path):
    path, model = ckpt
    images = [write_image(tmp_path / "photos" / f"img{i}.png", i, size=(40 + 8 * i, 30)) for i in range(2)]
    images.append(write_image(tmp_path / "photos" / "sub" / "grey.jpg", 9, mode="L"))
    out = tmp_path / "out"
    result = predict("--model", path, tmp_path / "photos", "--json", "--topk", "5", "--explain", "--save", out,
                     "--batch-size", "2")  # two batches, the second of one image
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(line["image"] for line in lines) == sorted(map(str, images))
    for line in lines:
        assert line["model"] == str(path)
        names = [p["class"] for p in line["predictions"]]
        probs = torch.tensor([p["probability"] for p in line["predictions"]])
        assert sorted(names) == CLASSES  # --topk 5 is capped at the 3 classes
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert probs.tolist() == sorted(probs.tolist(), reverse=True)
        expected = direct_probs(model, Path(line["image"]))
        assert names[0] == CLASSES[expected.argmax()]
        assert probs.tolist() == pytest.approx([expected[CLASSES.index(n)].item() for n in names], abs=1e-5)
    for image in images:
        for figure in (out / f"{image.stem}.png", out / f"{image.stem}_attention.png"):
            with Image.open(figure) as f:
                assert f.format == "PNG" and f.width > 300
    assert f"saved 6 figures in {out}/\n" in result.stderr
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == sorted(map(str, images))
    by_image = {line["image"]: line["predictions"][0] for line in lines}
    for row in rows:
        assert row["class_1"] == by_image[row["image"]]["class"]
        assert float(row["probability_1"]) == pytest.approx(by_image[row["image"]]["probability"], abs=1e-5)


def test_no_figures_writes_only_the_table_and_csv(ckpt, tmp_path, capsys):
    images = [write_image(tmp_path / "photos" / f"img{i}.png", i) for i in range(3)]
    out = tmp_path / "out"
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", "--json", "--save", out, "--no-figures")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(line)["image"] for line in result.stdout.splitlines()) == sorted(map(str, images))
    assert os.listdir(out) == ["predictions.csv"] and "figures in" not in result.stderr


def test_single_image_table_and_save_path(ckpt, tmp_path, capsys):
    path, model = ckpt
    image = write_image(tmp_path / "one.jpg", 3)
    figure = tmp_path / "figs" / "mine.png"
    result = predict_here(capsys, "--model", path, "--img_path", image, "--topk", "2", "--save", figure)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) == 3  # the image, then its top 2
    best = CLASSES[direct_probs(model, image).argmax()]
    assert lines[1].split()[0] == best
    assert figure.is_file() and not (tmp_path / "figs" / "predictions.csv").exists()
    assert result.stderr == f"saved {figure}\n"  # where to look


def test_a_save_path_that_cannot_be_written_is_one_line(ckpt, tmp_path, capsys):
    image = write_image(tmp_path / "one.jpg", 3)
    (tmp_path / "a_file").write_text("")
    result = predict_here(capsys, "--model", ckpt[0], image, "--save", tmp_path / "a_file" / "fig.png")
    assert_clean_failure(result)
    assert result.stderr == f"error: {tmp_path / 'a_file' / 'fig.png'}: cannot write ({tmp_path / 'a_file'} is a " \
        "file, not a folder); check that its folder is writable and the disk has room\n"


def test_ctrl_c_is_one_line_and_keeps_the_figures_so_far(ckpt, tmp_path, monkeypatch, capsys):
    images = [write_image(tmp_path / "photos" / f"{i}.png", i) for i in range(3)]
    saved, save = [], predict_script.save_prediction_figure

    def interrupted_at_the_third(*args):
        if len(saved) == 2:
            raise KeyboardInterrupt
        save(*args)
        saved.append(args[-1])
    monkeypatch.setattr(predict_script, "save_prediction_figure", interrupted_at_the_third)
    result = predict_here(capsys, "--model", ckpt[0], *images, "--save", tmp_path / "out")
    assert result.returncode == 130 and result.stderr.endswith("\ninterrupted\n") and "Traceback" not in result.stderr
    assert [p.is_file() for p in saved] == [True, True]


def test_figures_never_overwrite_the_images(ckpt, tmp_path, capsys):
    """--save naming an image, or the images' own folder: one line, and the photos stay as they were."""
    images = [write_image(tmp_path / "photos" / f"{name}.png", i) for i, name in enumerate("ab")]
    before = [p.read_bytes() for p in images]
    for inputs, save in (([images[0]], images[0]), (images, tmp_path / "photos")):
        result = predict_here(capsys, "--model", ckpt[0], *inputs, "--explain", "--save", save)
        assert_clean_failure(result)
        assert result.stderr == f"error: --save {save}: a figure would overwrite the image {images[0]}; save the " \
            "figures elsewhere\n"
    map_named_like_it = write_image(tmp_path / "photos" / "c_attention.png", 2)  # --explain --save photos/c.png
    before.append(map_named_like_it.read_bytes())
    images.append(map_named_like_it)
    result = predict_here(capsys, "--model", ckpt[0], images[2], "--explain", "--save", tmp_path / "photos" / "c.png")
    assert result.returncode == 2 and f"would overwrite the image {images[2]}" in result.stderr
    result = predict_here(capsys, "--model", ckpt[0], images[2], "--save", tmp_path / "photos" / "c.png")
    assert result.returncode == 0 and (tmp_path / "photos" / "c.png").exists()  # no --explain: no attention map
    assert [p.read_bytes() for p in images] == before
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", "--no-figures",
                          "--save", tmp_path / "photos")
    assert result.returncode == 0 and (tmp_path / "photos" / "predictions.csv").exists()  # no figure, no clash


def test_a_save_path_matplotlib_cannot_write_is_refused_before_loading_the_model(ckpt, tmp_path, monkeypatch, capsys):
    """For one image --save with a suffix is a figure file: out.txt was a folder, now it is one line."""
    image = write_image(tmp_path / "one.png", 3)
    monkeypatch.setattr(predict_script, "load_model", lambda args: pytest.fail("the model was loaded"))
    for name in ("out.txt", "out.xyz"):
        save = tmp_path / name
        result = predict_here(capsys, "--model", ckpt[0], image, "--save", save)
        assert_clean_failure(result)
        assert result.stderr == f"error: {save}: cannot write a figure as {save.suffix}; use one of " \
            f".{', .'.join(FORMATS)} (e.g. .png)\n"
        assert result.stdout == "" and not save.exists()


def test_explain_keeps_the_figures_format(ckpt, tmp_path, capsys):
    image = write_image(tmp_path / "one.png", 3)
    figure = tmp_path / "figs" / "fig.pdf"
    result = predict_here(capsys, "--model", ckpt[0], image, "--explain", "--save", figure)
    assert result.returncode == 0, result.stderr
    attention = tmp_path / "figs" / "fig_attention.pdf"
    assert sorted(os.listdir(tmp_path / "figs")) == ["fig.pdf", "fig_attention.pdf"]
    assert figure.read_bytes()[:5] == attention.read_bytes()[:5] == b"%PDF-"
    assert result.stderr == f"saved {figure} and {attention}\n"


def test_non_image_files_in_a_folder_are_counted_on_stderr(ckpt, tmp_path, capsys):
    images = [write_image(tmp_path / "photos" / f"{i}.png", i) for i in range(2)]
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "photos" / "sub" / "anim.gif", 4)  # an image, but not among torchvision's extensions
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", "--json", "--no-figures",
                          "--save", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(line)["image"] for line in result.stdout.splitlines()) == sorted(map(str, images))
    assert result.stderr.splitlines()[0] == f"skipped 2 non-image file(s): .gif 1, .txt 1 in {tmp_path / 'photos'}"
    for image in images:
        image.unlink()
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", "--save", tmp_path / "out")
    assert_clean_failure(result)  # nothing to predict: still an error, which says what it skipped
    assert result.stderr == f"error: {tmp_path / 'photos'}: no image files found (skipped 2 non-image file(s): " \
        ".gif 1, .txt 1); check the folder or pattern\n"


def test_urls_standard_input_and_links_to_nothing_are_named(ckpt, tmp_path, capsys):
    image = write_image(tmp_path / "photos" / "0.png", 0)
    (tmp_path / "photos" / "1.png").symlink_to(tmp_path / "gone.png")  # a link whose photo was deleted
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", "http://example.com/x.jpg", "-",
                          "--json", "--no-figures")
    assert_clean_failure(result)
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(image)]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: http://example.com/x.jpg: a URL is not read here; save the image to a file and pass "
                      "its path", "error: -: standard input is not read here; save the image to a file and pass its "
                      "path", f"error: {tmp_path / 'photos' / '1.png'}: no such file; check the path"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_predictions_and_rollout_match_the_cpu(ckpt, tmp_path, capsys):
    path, model = ckpt
    images = [write_image(tmp_path / "photos" / f"{i}.png", i) for i in range(3)]
    result = predict_here(capsys, "--model", path, tmp_path / "photos", "--json", "--explain",
                          "--save", tmp_path / "out", device="cuda")
    assert result.returncode == 0, result.stderr
    for line in map(json.loads, result.stdout.splitlines()):
        expected = direct_probs(model, Path(line["image"]))
        assert line["predictions"][0]["class"] == CLASSES[expected.argmax()]
        assert line["predictions"][0]["probability"] == pytest.approx(expected.max().item(), abs=1e-2)
    assert all((tmp_path / "out" / f"{i.stem}_attention.png").is_file() for i in images)
    x = torch.randn(2, 3, 32, 32)
    on_gpu = attention_rollout(tiny_model().cuda(), x.cuda()).cpu()
    assert on_gpu == pytest.approx(attention_rollout(tiny_model(), x), abs=1e-4)


def test_topk_below_one_and_empty_paths_are_refused(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict_script.main(["--model", str(ckpt[0]), str(write_image(tmp_path / "one.jpg", 3)), "--topk", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(": error: argument --topk: must be at least 1, not 0")
    for flag in ("--save", "--evaluate", "--cache-dir"):  # "": the current folder, were it taken
        with pytest.raises(SystemExit):
            predict_script.main(["--model", str(ckpt[0]), flag, "", "x.png"])
        assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: argument {flag}: must not be empty (a "
                                                                 "shell variable that is not set?)")


def test_bad_images_are_reported_and_the_others_predicted(ckpt, tmp_path):
    path, _ = ckpt
    good = [write_image(tmp_path / f"good{i}.png", i) for i in range(2)]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:60])  # a truncated file
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    result = predict("--model", path, good[0], missing, notes, corrupt, good[1], tmp_path / "nothing*.png",
                     "--save", out)
    assert_clean_failure(result)
    errors = result.stderr.strip().splitlines()
    for bad in (missing, notes, corrupt, tmp_path / "nothing*.png"):
        assert sum(line.startswith(f"error: {bad}: ") for line in errors) == 1, (bad, errors)
    assert [line for line in result.stdout.splitlines() if not line.startswith(" ")] == list(map(str, good))
    with open(out / "predictions.csv") as f:
        assert [row["image"] for row in csv.DictReader(f)] == list(map(str, good))


def test_bicubic_preprocessing_predicts_what_torchvisions_transforms_give(tmp_path):
    """A model whose preprocessing resamples bicubic (torchvision's SWAG weights, resize = crop, and vit_h_14's only
    weights) predicts on what its own transforms() give: decoding resampled bilinear, eval_transform's bicubic
    Resize then found the size already right, and with a random ViT-B/16 at 384 px top-1 changed on 2 of 3 photos."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification
    model = tiny_model()
    model.preprocess = dict(model.preprocess, resize_size=32, crop_size=32, interpolation="bicubic")
    path = tmp_path / "bicubic.pt"
    save_atomically(checkpoint(model), path)
    image = write_image(tmp_path / "photo.png", seed=3, size=(53, 40))
    out = predict("--model", path, image, "--json", "--topk", "3", "--no-figures")
    assert out.returncode == 0, out.stderr
    got = {p["class"]: p["probability"] for p in json.loads(out.stdout)["predictions"]}
    theirs = ImageClassification(crop_size=32, resize_size=32, mean=model.preprocess["mean"],
                                 std=model.preprocess["std"], interpolation=InterpolationMode.BICUBIC)
    with torch.no_grad(), Image.open(image) as photo:
        expected = model(theirs(photo.convert("RGB"))[None]).softmax(-1)[0]
    assert got == pytest.approx(dict(zip(CLASSES, expected.tolist())), abs=1e-5)


def test_predictions_equal_torchvisions_model_on_its_weights_transforms(tmp_path):
    """README: predictions equal those of torchvision's model on weights.transforms()(Image.open(path).convert("RGB"))
    within 1e-5: a small torchvision ViT at 224 px and ours loaded from its state dict, predict.py's decoding and
    batching against torchvision's own preprocessing, on images wide, tall, small, greyscale and with a palette."""
    from torchvision.models import ViT_B_32_Weights
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT
    torch.manual_seed(0)
    tv = TorchvisionViT(224, 32, 2, 2, 32, 64, num_classes=3).eval()
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_(std=0.3)  # probabilities far from uniform, so that another crop would show
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = build_model("vit_b_32", num_classes=3, pretrained=tmp_path / "tv.pth", num_layers=2, num_heads=2,
                       hidden_dim=32, mlp_dim=64).eval()
    transforms = ViT_B_32_Weights.IMAGENET1K_V1.transforms()  # resize 256, crop 224, bilinear: our default's
    images = [write_image(tmp_path / name, seed, size, mode) for seed, (name, size, mode) in enumerate([
        ("wide.jpg", (640, 427), "RGB"), ("tall.png", (301, 451), "RGB"), ("small.png", (90, 70), "RGB"),
        ("grey.png", (333, 250), "L"), ("palette.png", (250, 333), "P")])]
    failures = []
    predicted = list(predict_script.predict(ours, images, torch.device("cpu"), 2, False, failures))
    assert not failures and [path for path, *_ in predicted] == images
    for path, _, probs, _ in predicted:
        with torch.no_grad(), Image.open(path) as image:
            expected = tv(transforms(image.convert("RGB"))[None]).softmax(-1)[0]
        assert expected.max() > 0.5 and (probs - expected).abs().max() <= 1e-5, path


def test_pretrained_uses_the_models_classes_and_preprocessing(tmp_path, capsys, monkeypatch):
    model = tiny_model()  # stands in for torchvision's ImageNet ViT-B/16, which cannot be downloaded here
    model.classes = ["tench", "goldfish", "shark"]
    model.preprocess = dict(model.preprocess, resize_size=48, mean=[0.5] * 3, std=[0.5] * 3)
    asked = []  # torchvision's weights API, asked for the weights of a model by name
    monkeypatch.setattr(vit.weights, "_torchvision_weights", lambda name: asked.append(name) or vit.weights.Pretrained(
        model.state_dict(), "torchvision stand-in", model.preprocess, model.classes))
    image = write_image(tmp_path / "fish.png", 5, size=(64, 50))
    result = predict_here(capsys, "--pretrained", image, "--json", "--save", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert asked == ["vit_b_16"]  # the model is then built from the weights' shapes, with their classes
    line = json.loads(result.stdout)
    expected = direct_probs(model, image)
    assert [p["class"] for p in line["predictions"]] == [model.classes[i] for i in expected.argsort(descending=True)]
    assert line["predictions"][0]["probability"] == pytest.approx(expected.max().item(), abs=1e-5)


def test_pretrained_path_loads_that_weights_file(tmp_path, capsys, monkeypatch):
    """--pretrained PATH: the weights file; an image, folder or glob right after --pretrained stays an input."""
    model = tiny_model()  # stands in for torchvision's ViT-B/16 with the ImageNet weights of a file
    model.classes = ["tench", "goldfish", "shark"]
    built, asked = [], []  # build_model's name, the weights' source and the other arguments; torchvision's API
    monkeypatch.setattr(vit.checkpoint, "build_model", lambda name, pretrained, **k: built.append(
        (name, pretrained.source, k)) or model)
    monkeypatch.setattr(vit.weights, "_torchvision_weights", lambda name: asked.append(name) or vit.weights.Pretrained(
        model.state_dict(), "torchvision stand-in", model.preprocess, model.classes))
    image = write_image(tmp_path / "photos" / "fish.png", 5)
    weights = tmp_path / "b16.pth"
    torch.save(model.state_dict(), weights)  # the Table 1 model of its shapes: vit_ti_16 with 8 px patches, 2 layers
    for args, pretrained in (([weights, image], str(weights)), ([image], True), ([tmp_path / "photos"], True),
                             ([tmp_path / "photos" / "*.png"], True)):
        built.clear(), asked.clear()
        result = predict_here(capsys, "--pretrained", *args, "--json", "--no-figures", "--save", tmp_path / "out")
        assert result.returncode == 0, result.stderr
        source = "torchvision stand-in" if pretrained is True else pretrained  # the Table 1 model of its shapes:
        assert built == [("vit_ti_16", source, {"patch_size": 8, "num_layers": 2, "num_classes": 3})]  # its head
        assert asked == (["vit_b_16"] if pretrained is True else [])
        line = json.loads(result.stdout)
        assert line["image"] == str(image) and line["predictions"][0]["class"] in model.classes
        assert line["model"] == (str(weights) if pretrained is not True else "vit_b_16 (torchvision ImageNet weights)")


def test_pretrained_path_takes_a_checkpoint_and_names_a_state_dict_without_classes(ckpt, tmp_path, capsys):
    image = write_image(tmp_path / "fish.png", 5)
    by_model, by_pretrained = (predict_here(capsys, flag, ckpt[0], image, "--json", "--no-figures")
                               for flag in ("--model", "--pretrained"))
    assert by_pretrained.returncode == 0, by_pretrained.stderr
    assert json.loads(by_pretrained.stdout)["predictions"] == json.loads(by_model.stdout)["predictions"]
    hybrid = build_model("vit_ti_16", num_classes=3, image_size=32, patch_size=8, num_layers=1, stem="conv")
    torch.save(hybrid.state_dict(), tmp_path / "hybrid.pth")  # its 1x1 projection once made the image size 4
    result = predict_here(capsys, "--pretrained", tmp_path / "hybrid.pth", image, "--no-figures")
    assert_clean_failure(result)
    assert result.stderr == (f"error: {tmp_path / 'hybrid.pth'}: holds no class names; use a checkpoint written by "
                             "train.py (--model) or torchvision's ImageNet vit_b_16 weights (--pretrained [PATH])\n")


def test_an_image_named_twice_is_predicted_once(ckpt, tmp_path, capsys):
    images = [write_image(tmp_path / "photos" / f"img{i}.png", i) for i in range(2)]
    out = tmp_path / "out"
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", tmp_path / "photos" / "*.png", images[0],
                          "--json", "--save", out)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == list(map(str, images))
    assert sorted(os.listdir(out)) == ["img0.png", "img1.png", "predictions.csv"]
    assert f"saved 2 figures in {out}/" in result.stderr
    (tmp_path / "photos" / "link.png").symlink_to(images[0])  # another name for a photo: a name of its own
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "photos", "--json", "--no-figures")
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [
        *map(str, images), str(tmp_path / "photos" / "link.png")]


def test_pretrained_path_that_is_missing_is_one_line(tmp_path, capsys):
    image = write_image(tmp_path / "fish.png", 5)
    result = predict_here(capsys, "--pretrained", tmp_path / "b16.pth", image, "--save", tmp_path / "out")
    assert_clean_failure(result)
    assert result.stderr == f"error: {tmp_path / 'b16.pth'}: no such file; check the path\n" and result.stdout == ""


class Trap:
    """Unpickling this would create a file: a checkpoint must never be unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_bad_checkpoints_give_one_line_and_status_2(ckpt, tmp_path, capsys):
    path, model = ckpt
    image = write_image(tmp_path / "x.png", 0)
    marker = tmp_path / "unpickled"
    torch.save({"format": "vit-checkpoint-1", "trap": Trap(marker)}, tmp_path / "pickled.pt")
    torch.save(model, tmp_path / "module.pt")  # a whole pickled nn.Module
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    mismatch = checkpoint(model)
    mismatch["model"] = {"name": None, "config": dict(model.config, num_layers=3)}
    torch.save(mismatch, tmp_path / "mismatch.pt")
    (tmp_path / "text.pt").write_text("hello")
    for bad in ("pickled.pt", "module.pt", "foreign.pt", "mismatch.pt", "text.pt", "absent.pt"):
        run = predict if bad == "pickled.pt" else lambda *a: predict_here(capsys, *a)  # one as a user would
        result = run("--model", tmp_path / bad, image, "--save", tmp_path / "out")
        assert_clean_failure(result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / bad}: "), lines
        assert result.stdout == ""
        if bad == "foreign.pt":  # a state dict: the flag that takes it
            assert f"plain weights go in as --pretrained {tmp_path / bad} " in lines[0]
    assert not marker.exists()


def test_evaluate_matches_hand_count(ckpt, tmp_path, capsys):
    path, model = ckpt
    expected = torch.zeros(3, 3, dtype=torch.long)
    for label, name in enumerate(CLASSES):
        for i in range(3 + label):
            image = write_image(tmp_path / "data" / "test" / name / f"{i}.png", 10 * label + i, size=(36 + i, 44))
            expected[label, direct_probs(model, image).argmax()] += 1
    out = tmp_path / "out"
    result = predict_here(capsys, "--model", path, "--evaluate", tmp_path / "data", "--save", out,
                          "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["confusion_matrix"] == expected.tolist()
    assert saved["accuracy"] == pytest.approx(expected.diag().sum().item() / 12)
    assert f"accuracy {saved['accuracy']:.4f} on 12 images" in result.stdout
    for row, name in zip(saved["classes"], CLASSES):
        i = CLASSES.index(name)
        assert row["class"] == name and row["support"] == 3 + i
        assert row["recall"] == pytest.approx(expected[i, i].item() / (3 + i))
    with Image.open(out / "confusion_matrix.png") as f:
        assert f.format == "PNG"
    with pytest.MonkeyPatch.context() as m:  # again: the images come from the cache, the result is the same
        m.setattr("vit.decoding.decode", lambda *a: pytest.fail("decoded again although cached"))
        assert predict_here(capsys, "--model", path, "--evaluate", tmp_path / "data", "--save", out, "--cache-dir",
                            tmp_path / "cache").returncode == 0
    assert json.loads((out / "evaluation.json").read_text()) == saved
    part = tmp_path / "part"  # a folder with one of the model's classes: counted in that class's row
    shutil.copytree(tmp_path / "data" / "test" / CLASSES[2], part / CLASSES[2])
    assert predict_here(capsys, "--model", path, "--evaluate", part, "--save", out, "--cache-dir",
                        tmp_path / "cache").returncode == 0
    matrix = json.loads((out / "evaluation.json").read_text())["confusion_matrix"]
    assert matrix == [[0] * 3, [0] * 3, expected[2].tolist()]


def test_evaluate_reports_bad_folders_and_images(ckpt, tmp_path, capsys):
    path, _ = ckpt
    for name in ("cat", "bird"):
        write_image(tmp_path / "unknown" / name / "0.png", 0)
    result = predict_here(capsys, "--model", path, "--evaluate", tmp_path / "unknown", "--save", tmp_path / "out",
                          "--cache-dir", tmp_path / "cache")
    assert_clean_failure(result)
    assert result.stderr.strip() == (f"error: {tmp_path / 'unknown'}: class folder(s) bird are not among the "
                                     "model's classes (cat, dog, fish); pass a folder with one sub-folder per class")
    for given, what in ((tmp_path / "absent", "no such folder"), (tmp_path / "unknown" / "cat" / "0.png",
                                                                  "a file, not a folder")):
        result = predict_here(capsys, "--model", path, "--evaluate", given, "--save", tmp_path / "out")
        assert_clean_failure(result)
        assert result.stderr.strip() == f"error: {given}: {what}; pass ROOT/<class>/<images> or a root holding test/"
    for name in ("cat", "dog"):
        write_image(tmp_path / "data" / "val" / name / "0.png", 0)
    (tmp_path / "data" / "val" / "dog" / "1.png").write_bytes(b"\x89PNG broken")
    result = predict_here(capsys, "--model", path, "--evaluate", tmp_path / "data", "--save", tmp_path / "out",
                          "--cache-dir", tmp_path / "cache")
    assert_clean_failure(result)  # the broken image is named, the others are evaluated
    broken = f"error: {tmp_path / 'data' / 'val' / 'dog' / '1.png'}: "
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(broken), errors
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["total"] == 2


def test_evaluate_with_json_prints_only_json(ckpt, tmp_path, capsys):
    """--json with --evaluate: stdout is JSON lines, one per image and then evaluation.json's object."""
    path, _ = ckpt
    for label, name in enumerate(CLASSES):
        write_image(tmp_path / "data" / "test" / name / "0.png", label)
    image = write_image(tmp_path / "one.png", 7)
    out = tmp_path / "out"
    result = predict_here(capsys, "--model", path, image, "--evaluate", tmp_path / "data", "--json", "--save", out,
                          "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["image"] == str(image)
    assert lines[1] == json.loads((out / "evaluation.json").read_text()) and lines[1]["total"] == 3
    assert f"saved {out / 'evaluation.json'} and {out / 'confusion_matrix.png'}\n" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_confusion_matrix_never_waits_for_the_gpu():
    """train.py counts each test batch on the GPU; only the epoch's total is read back."""
    preds, labels = (torch.tensor(v, device="cuda") for v in ([0, 1, 1, 2, 2, 0], [0, 1, 2, 2, 2, 1]))
    torch.cuda.set_sync_debug_mode("error")  # any wait for the GPU raises
    try:
        matrix = confusion_matrix(preds, labels, 3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert matrix.is_cuda and matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]


def test_metrics_by_hand():
    matrix = confusion_matrix([0, 1, 1, 2, 2, 0], [0, 1, 2, 2, 2, 1], 3)
    assert matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]  # rows: true class
    report = classification_report(matrix, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    b = report["classes"][1]
    assert (b["precision"], b["recall"], b["support"]) == (0.5, 0.5, 2)
    c = report["classes"][2]
    assert c["precision"] == 1.0 and c["recall"] == pytest.approx(2 / 3) and c["f1"] == pytest.approx(0.8)
    perfect_without_b = classification_report([[5, 0, 0], [0, 0, 0], [0, 0, 5]], ["a", "b", "c"])
    assert perfect_without_b["macro_f1"] == 1.0  # over the classes the labels hold: b has none, so no F1 of 0


def test_awkward_file_names_are_files_and_figures_stay_apart(ckpt, tmp_path, capsys):
    """A name with [ ] is a file, not a glob; x.png and x_attention.png with --explain get four distinct figures;
    a file name that is not UTF-8 reaches predictions.csv as its own bytes."""
    bracket, plain = write_image(tmp_path / "a" / "photo [1].png", 0), write_image(tmp_path / "a" / "photo 1.png", 1)
    result = predict_here(capsys, "--model", ckpt[0], bracket, "--no-figures", "--json")
    assert result.returncode == 0 and [json.loads(line)["image"] for line in result.stdout.splitlines()] == [
        str(bracket)] and plain.exists()
    images = [write_image(tmp_path / "b" / name, i) for i, name in enumerate(("x.png", "x_attention.png"))]
    result = predict_here(capsys, "--model", ckpt[0], tmp_path / "b", "--explain", "--save", tmp_path / "figs")
    assert result.returncode == 0 and len(images) == 2 and len(list((tmp_path / "figs").glob("*.png"))) == 4
    if sys.platform.startswith("linux"):  # file names are bytes there
        latin = os.fsdecode(os.fsencode(str(tmp_path / "c")) + b"/caf\xe9.png")
        write_image(Path(latin), 2)
        result = predict_here(capsys, "--model", ckpt[0], tmp_path / "c", "--no-figures", "--save", tmp_path / "out")
        assert result.returncode == 0 and b"caf\xe9.png" in (tmp_path / "out" / "predictions.csv").read_bytes()
        assert result.stdout.startswith(f"{tmp_path / 'c'}/caf\\xe9.png\n")


def test_output_in_an_encoding_without_the_names_characters_is_escaped(ckpt, tmp_path):
    """As on Windows with output redirected to a file (a code page): a photo named in Japanese is still predicted."""
    image = write_image(tmp_path / "寿司 photo.png", 0)
    command = [sys.executable, "predict.py", "--model", ckpt[0], image, "--no-figures", "--device", "cpu"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, timeout=120,
                            env=dict(os.environ, PYTHONIOENCODING="cp1252"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("cp1252").startswith(f"{tmp_path}{os.sep}\\u5bff\\u53f8 photo.png\n")


def test_evaluate_counts_samples_not_batches():
    logits = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 0, 2], [2, 0, 0]])  # predicts 0, 1, 2, 0
    labels = torch.tensor([0, 2, 2, 1])
    batches = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]  # 2 of 3 right, then 0 of 1
    loss, acc, matrix = evaluate(torch.nn.Identity(), batches, lambda x: x, 3, torch.device("cpu"))
    assert acc == 0.5  # over the 4 samples (the mean over the two batches would be 1/3)
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item())
    assert matrix.tolist() == confusion_matrix(logits.argmax(1), labels, 3).tolist()


def test_rollout_is_a_distribution_over_the_patch_grid():
    model = tiny_model()
    maps = attention_rollout(model, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 4, 4)
    assert (maps >= 0).all()
    assert maps.sum(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0])


def test_rollout_runs_in_eval_mode_and_restores_each_modules_mode():
    """Right after build_model the model trains: no attention dropout, BatchNorm's running statistics untouched."""
    torch.manual_seed(0)
    model = build_model("vit_ti_16", num_classes=3, image_size=32, patch_size=8, num_layers=2, stem="conv",
                        dropout=0.1, attention_dropout=0.5)
    model.head.eval()  # a module in another mode than the model's keeps it
    modes = [m.training for m in model.modules()]
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # the conv stem's BatchNorm statistics
    assert any("running_mean" in name for name in buffers)
    x = torch.randn(2, 3, 32, 32)
    maps = attention_rollout(model, x)
    assert [m.training for m in model.modules()] == modes and model.training
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert torch.allclose(maps, attention_rollout(model.eval(), x), atol=1e-6)


def test_rollout_of_uniform_attention_is_uniform():
    model = tiny_model()
    for block in model.blocks:  # q = k = 0: every token attends equally to all tokens
        torch.nn.init.zeros_(block.attn.qkv.weight)
        torch.nn.init.zeros_(block.attn.qkv.bias)
    maps = attention_rollout(model, torch.randn(1, 3, 32, 32))
    assert maps[0] == pytest.approx(torch.full((4, 4), 1 / 16), abs=1e-6)


def test_rollout_follows_attention_set_by_hand():
    model = tiny_model(num_layers=3)
    target = 6  # patch (row 1, column 2) of the 4x4 grid; token 7 (the class token is token 0)

    def focused(images, return_attn):
        logits, attns = model(images, return_attn=True)
        one_hot = torch.zeros_like(attns[0])
        one_hot[..., 1 + target] = 1.0  # every head of every layer: all queries attend to one patch
        return logits, [one_hot for _ in attns]

    maps = attention_rollout(focused, torch.randn(2, 3, 32, 32))
    expected = torch.zeros(4, 4)
    expected[1, 2] = 1.0
    assert maps[0] == pytest.approx(expected) and maps[1] == pytest.approx(expected)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_attention_overlay_puts_each_token_on_its_receptive_fields_centre(stem):
    """The overlay draws a token's attention where the token looks: the conv stem's token (1, 1) is centred on pixel
    (8, 8) of a 32 px input with 8 px patches (its receptive field spans pixels 1-15), the patch stem's on its
    patch's centre (11.5); drawing both at 11.5 shifts the conv stem's map by 3.5 px, half a patch."""
    from vit.explain import token_shift, upsample
    torch.manual_seed(0)
    model = build_model("vit_ti_16", num_classes=3, image_size=32, patch_size=8, num_layers=1, stem=stem).eval()
    stem_only = model.embed.stem  # the receptive field's centre, measured: |d token (1, 1) / d pixel|
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    tokens = model.embed.proj(stem_only(x)) if stem == "conv" else x[:, :, 8:16, 8:16]
    (tokens[0, :, 1, 1] if stem == "conv" else tokens).abs().sum().backward()
    weight = x.grad[0].abs().sum(0)
    rows, cols = weight.sum(1) / weight.sum(), weight.sum(0) / weight.sum()
    centre = (rows @ torch.arange(32.0)).item(), (cols @ torch.arange(32.0)).item()
    expected = 8.0 if stem == "conv" else 11.5
    assert centre == pytest.approx((expected, expected), abs=0.6)
    one_hot = torch.zeros(4, 4)
    one_hot[1, 1] = 1.0
    heat = torch.from_numpy(upsample(one_hot, (32, 32), token_shift(model)))
    peak = (heat == heat.max()).nonzero().float().mean(0)  # the peak's centre (two pixels for the patch stem)
    assert peak.tolist() == pytest.approx([expected, expected])
    plain = F.interpolate(one_hot[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(torch.from_numpy(upsample(one_hot, (32, 32))), plain / plain.max(), atol=1e-6)


def one_hot_attention(*targets, tokens=5):
    """Attention weights (1, heads, tokens, tokens) where head h sends every query to token targets[h]."""
    attn = torch.zeros(1, len(targets), tokens, tokens)
    for head, target in enumerate(targets):
        attn[0, head, :, target] = 1.0
    return attn


def test_rollout_multiplies_the_layers_with_the_residual_and_averages_the_heads():
    """2 x 2 patches (tokens 1-4). Layer 1 sends every token to patch a, layer 2 to patch b. With the residual,
    (A + I) / 2 per layer, the class token after layer 2 is 1/2 itself and 1/2 patch b as they were after layer 1:
    1/2 itself and 1/2 a, and 1/2 b and 1/2 a. Over the patches: a 1/4 + 1/4, b 1/4 -> a 2/3, b 1/3."""
    a, b, c = 1, 2, 3  # tokens of patches (0, 0), (0, 1), (1, 0)
    maps = rollout([one_hot_attention(a, a), one_hot_attention(b, b)])
    assert maps[0] == pytest.approx(torch.tensor([[2 / 3, 1 / 3], [0, 0]]))
    # heads averaged: layer 1's two heads send to a and to c, (A + I) / 2 = 1/4 a + 1/4 c + 1/2 itself: the class
    # token gets 1/4 of a, c and itself from layer 1 and 1/4 of b from layer 2
    maps = rollout([one_hot_attention(a, c), one_hot_attention(b, b)])
    assert maps[0] == pytest.approx(torch.tensor([[1 / 3, 1 / 3], [1 / 3, 0]]))


def test_the_figures_show_the_model_input_unnormalised():
    preprocess = {"resize_size": 8, "crop_size": 8, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                  "interpolation": "bilinear"}
    crop = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    view = model_view(eval_normalise(preprocess)(crop), preprocess)
    assert view.shape == (8, 8, 3) and view == pytest.approx((crop.permute(1, 2, 0).float() / 255).numpy(), abs=1e-6)
