"""python -m vit.inspect: the paper's Figure 7 (filters, position similarity, attention distance) against hand
computations, end to end on tiny models, and its one-line errors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from vit import UserError, build_model
from vit import inspect as vit_inspect
from vit.checkpoint import load_model, model_checkpoint
from vit.files import save_atomically
from vit.decoding import decode
from vit.transforms import eval_transform

REPO = Path(__file__).parents[1]
P = 8  # patch size in pixels


def tiny_model(stem="patch"):
    """A 2-layer ViT-Ti on 32x32 images: 4x4 patches of 8 pixels, 3 heads."""
    torch.manual_seed(0)
    return build_model("vit_ti_16", num_classes=3, image_size=32, patch_size=P, num_layers=2, stem=stem).eval()


def write_image(path, seed, size=(40, 30)):
    """A random RGB image file (format from the suffix)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(folder of 3 images, checkpoint of tiny_model(), checkpoint of its conv-stem hybrid)."""
    root = tmp_path_factory.mktemp("inspect")
    for i in range(3):
        write_image(root / "photos" / ("sub" if i == 2 else "") / f"img{i}.png", i, size=(40 + 8 * i, 30))
    for stem in ("patch", "conv"):
        save_atomically(model_checkpoint(tiny_model(stem)), root / f"{stem}.pt")
    return root / "photos", root / "patch.pt", root / "conv.pt"


def inspect_here(capsys, *args):
    """vit.inspect's main in this process (no start-up cost) -> (exit status, stdout, stderr)."""
    status = vit_inspect.main([str(a) for a in args] + ["--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def attention(rows, images=1):
    """(images, heads, N, N) attention weights from one (N, N) matrix per head."""
    return torch.stack([torch.tensor(r, dtype=torch.float32) for r in rows])[None].repeat(images, 1, 1, 1)


def test_attention_distance_on_a_2x2_grid_equals_the_hand_computation():
    uniform = (0 + P + P + P * math.sqrt(2)) / 4  # from any patch of a 2 x 2 grid to all four
    corner = [0, 0, 0, 0, 1]  # the class token's own row: not a query, so it must not count
    to_patches = [corner] + [[0, 0.25, 0.25, 0.25, 0.25]] * 4
    with_class = [corner] + [[0.2, 0.2, 0.2, 0.2, 0.2]] * 4  # a fifth of each row to the class token: not renormalised
    to_self = [corner] + [[0.0] * (q + 1) + [1.0] + [0.0] * (3 - q) for q in range(4)]
    first = attention([to_patches, to_self, with_class], images=2)
    second = torch.cat([attention([to_patches] * 3), attention([to_self] * 3)])  # two images: their mean
    distances = vit_inspect.mean_attention_distance([first, second], grid=2, patch_size=P)
    assert distances.shape == (2, 3)
    assert distances[0].tolist() == pytest.approx([uniform, 0.0, 0.8 * uniform], abs=1e-5)
    assert distances[1].tolist() == pytest.approx([uniform / 2] * 3, abs=1e-5)


def test_attention_all_to_the_far_corner_of_a_3x3_grid():
    row = [0.0] * 9 + [1.0]  # every token, the class token too, attends only to patch (row 3, column 3)
    by_hand = P * (2 * math.sqrt(2) + math.sqrt(5) + 2 + math.sqrt(5) + math.sqrt(2) + 1 + 2 + 1 + 0) / 9
    distances = vit_inspect.mean_attention_distance([attention([[row] * 10])], grid=3, patch_size=P)
    assert distances.shape == (1, 1) and distances.item() == pytest.approx(by_hand, abs=1e-5)


def test_position_similarity_is_one_on_each_tiles_own_position_and_symmetric():
    model = tiny_model()
    sim = vit_inspect.position_similarity(model)
    assert sim.shape == (4, 4, 4, 4)
    own = torch.stack([sim[i, j, i, j] for i in range(4) for j in range(4)])
    assert torch.allclose(own, torch.ones(16), atol=1e-5)
    assert torch.allclose(sim, sim.permute(2, 3, 0, 1), atol=1e-6)
    pos = model.embed.pos_embed[0].detach()  # token 0 is the class token: position (row 1, column 2) is token 7
    assert sim[1, 2, 3, 0].item() == pytest.approx(F.cosine_similarity(pos[7], pos[13], dim=0).item(), abs=1e-5)


def test_embedding_pca_matches_the_svd_of_the_centred_filters():
    model = tiny_model()
    components, ratios = vit_inspect.embedding_pca(model)
    filters = model.embed.proj.weight.detach().double().flatten(1)
    _, s, vh = torch.linalg.svd(filters - filters.mean(dim=0), full_matrices=False)
    assert components.shape == (28, 3, P, P) and ratios.shape == (28,)
    flat = components.double().flatten(1)
    assert torch.allclose((flat * vh[:28]).sum(1).abs(), torch.ones(28, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ratios.double(), s[:28] ** 2 / (s**2).sum(), atol=1e-6)
    assert (flat.gather(1, flat.abs().argmax(1, keepdim=True)) > 0).all()  # the sign rule


def test_embedding_pca_of_filters_of_low_rank_draws_what_exists(tmp_path):
    model = tiny_model()
    torch.manual_seed(1)
    low = torch.randn(192, 5) @ torch.randn(5, 3 * P * P) + torch.randn(3 * P * P)  # 5 dimensions about a mean
    with torch.no_grad():
        model.embed.proj.weight.copy_(low.view(192, 3, P, P))
    components, ratios = vit_inspect.embedding_pca(model)
    assert components.shape == (5, 3, P, P)
    assert ratios.sum().item() == pytest.approx(1.0, abs=1e-5)
    vit_inspect.plot_filters(components, ratios, tmp_path / "filters.png")
    with Image.open(tmp_path / "filters.png") as image:
        assert image.width > 400


def test_embedding_pca_refuses_the_conv_stem():
    with pytest.raises(UserError, match=r"^the conv stem \(stem='conv', the hybrid\) has no filters on image patches"):
        vit_inspect.embedding_pca(tiny_model("conv"))


def test_inspect_writes_the_three_figures_and_the_numbers_behind_them(files, tmp_path):
    photos, ckpt, _ = files
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "vit.inspect", ckpt, "--images", photos, "--out", out,
                             "--batch-size", "2", "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)  # two batches, as a user runs it
    assert result.returncode == 0, result.stderr
    for name in ("embedding_filters.png", "position_similarity.png", "attention_distance.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300
    numbers = json.loads((out / "inspect.json").read_text())
    images = sorted(photos.rglob("*.png"))
    assert numbers["images"] == {"count": 3, "paths": list(map(str, images))}
    assert numbers["model"]["label"] == str(ckpt) and numbers["model"]["config"]["num_layers"] == 2
    model = tiny_model()  # the checkpoint's model: its distances by hand on the images preprocessed by hand
    x = torch.stack([eval_transform(model.preprocess)(decode(p, model.preprocess)) for p in images])
    with torch.no_grad():
        expected = vit_inspect.mean_attention_distance(model(x, return_attn=True)[1], 4, P)
    distances = torch.tensor(numbers["mean_attention_distance_px"])
    assert distances.shape == (2, 3)  # layers x heads
    assert torch.allclose(distances, expected, atol=1e-4)
    assert numbers["embedding_filters_explained_variance_ratio"] == pytest.approx(
        vit_inspect.embedding_pca(model)[1].tolist(), abs=1e-6)


def test_a_conv_stem_gets_two_figures_and_one_line_why_not_the_filters(files, tmp_path, capsys):
    photos, _, conv = files
    status, out, err = inspect_here(capsys, conv, "--images", photos / "*.png", "--out", tmp_path)
    assert status == 0, err
    assert out.splitlines()[0].startswith("no embedding_filters.png: the conv stem") and len(out.splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention_distance.png", "inspect.json",
                                                          "position_similarity.png"]
    numbers = json.loads((tmp_path / "inspect.json").read_text())
    assert numbers["images"]["count"] == 2 and numbers["embedding_filters_explained_variance_ratio"] is None


def test_pretrained_path_takes_a_torchvision_state_dict(files, tmp_path, capsys):
    photos, _, _ = files
    torch.manual_seed(2)
    torchvision_model = TorchvisionViT(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=192,
                                       mlp_dim=768)
    torch.save(torchvision_model.state_dict(), tmp_path / "tv.pth")
    status, _, err = inspect_here(capsys, "--pretrained", tmp_path / "tv.pth", "--images", photos, "--out",
                                  tmp_path / "out", "--max-images", "2")
    assert status == 0, err
    assert "using the first 2 of 3 images (--max-images)" in err
    numbers = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert numbers["model"]["name"] == "vit_ti_16" and numbers["model"]["weights"] == str(tmp_path / "tv.pth")
    assert numbers["images"]["count"] == 2 and len(numbers["mean_attention_distance_px"]) == 2
    pos = torchvision_model.encoder.pos_embedding[0, 1:].detach()  # its own position embeddings, not a new model's
    expected = F.cosine_similarity(pos[0], pos[5], dim=0).item()
    model, _ = load_model(pretrained=str(tmp_path / "tv.pth"))
    assert vit_inspect.position_similarity(model)[0, 0, 1, 1].item() == pytest.approx(expected, abs=1e-5)


def test_errors_are_one_line_naming_the_file(files, tmp_path, capsys):
    photos, ckpt, _ = files
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    torch.save(tiny_model().state_dict(), tmp_path / "weights.pth")
    cases = [((ckpt, "--images", tmp_path / "empty"), f"error: {tmp_path / 'empty'}: no image files found "
              "(skipped 1 non-image file(s): .txt 1); check the folder or pattern"),
             ((ckpt, "--images", tmp_path / "absent"), f"error: {tmp_path / 'absent'}: no such file or folder; "
              "check the path given to --images"),
             ((tmp_path / "weights.pth", "--images", photos), f"error: {tmp_path / 'weights.pth'}: not a checkpoint "
              "of this project")]
    for args, message in cases:
        status, out, err = inspect_here(capsys, *args, "--out", tmp_path / "out")
        assert status == 2 and out == ""
        assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as stopped:  # argparse's own line, status 2
        vit_inspect.main([str(ckpt), "--images", str(photos), "--max-images", "0"])
    assert stopped.value.code == 2 and "--max-images/--max_images: must be at least 1, not 0" in capsys.readouterr().err
