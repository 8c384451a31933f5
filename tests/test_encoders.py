"""The TextImageEncoder contract, spec parsing, offline failures and local weight loading."""


import pytest
import torch

from langfree.encoders import (
    EncoderUnavailable,
    OpenClipEncoder,
    TextImageEncoder,
    load_encoder,
    save_random_small_clip,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_random_small_clip(tmp_path_factory.mktemp("enc") / "tiny", seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_encoder(str(tiny_dir))


def test_contract_shapes_norm_dtype(tiny):
    assert isinstance(tiny, TextImageEncoder) and isinstance(tiny, OpenClipEncoder)
    t = tiny.encode_text(["a large red circle at the top left", "blue square", ""])
    x = torch.rand(2, 3, 48, 40) * 2 - 1  # any size: resized inside
    i = tiny.encode_image(x)
    assert t.shape == (3, tiny.embed_dim) and i.shape == (2, tiny.embed_dim)
    assert t.dtype == torch.float32 and i.dtype == torch.float32
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(i.norm(dim=1), torch.ones(2))
    assert tiny.to("cpu") is tiny
    assert not torch.allclose(t[0], t[1])  # different texts, different embeddings


def test_frozen_eval_and_gradient_reaches_images(tiny):
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    target = tiny.encode_text(["a red circle", "a blue star"])
    loss = -(tiny.encode_image(x) * target).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.parameters())


def test_preprocess_resizes_and_normalises(tiny):
    x = torch.zeros(1, 3, 64, 64)  # mid grey in [-1, 1]
    y = tiny.preprocess(x)
    assert y.shape == (1, 3, tiny.image_size, tiny.image_size)
    expected = (0.5 - tiny.mean) / tiny.std
    torch.testing.assert_close(y, expected.expand_as(y))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny.encode_image(torch.zeros(3, 32, 32))


def test_round_trip_identical_embeddings(tiny_dir, tiny, tmp_path):
    import json

    from langfree.encoders import save_small_clip

    cfg = json.loads((tiny_dir / "encoder.json").read_text())["model_cfg"]
    save_small_clip(tiny.model, cfg, tmp_path / "copy")
    again = load_encoder(str(tmp_path / "copy"))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    texts = ["a small green star on the right", "purple diamond, big"]
    assert torch.equal(again.encode_image(x), tiny.encode_image(x))
    assert torch.equal(again.encode_text(texts), tiny.encode_text(texts))
    assert again.weights_hash() == tiny.weights_hash()


def test_corrupted_encoder_dir_is_refused(tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    blob = bytearray((bad / "encoder.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "encoder.safetensors").write_bytes(bytes(blob))
    with pytest.raises(EncoderUnavailable, match="does not match"):
        load_encoder(str(bad))


@pytest.mark.timeout(60)  # a hang (a download retry loop) fails the test instead of blocking CI
def test_offline_pretrained_tag_fails_at_once_without_download(monkeypatch):
    import open_clip.pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", no_download)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", no_download)
    for spec in ("open_clip:ViT-B-32/openai", "open_clip:ViT-B-32/laion2b_s34b_b79k"):
        with pytest.raises(EncoderUnavailable) as info:
            load_encoder(spec)
        message = str(info.value)
        assert "HF_HUB_OFFLINE" in message and "open_clip:MODEL@" in message
        assert "langfree encoder train" in message


@pytest.mark.parametrize("spec, words", [
    ("open_clip:ViT-B-32", "names no weights"),  # never random weights in silence
    ("open_clip:ViT-B-32/no-such-tag", "known tags"),
    ("open_clip:No-Such-Model/openai", "no model named"),
    ("open_clip:ViT-B-32@/no/such/file.safetensors", "does not exist"),
    ("what-is-this", "unknown encoder spec"),
    ("", "empty encoder spec"),
])
def test_bad_specs_say_what_to_pass(spec, words):
    with pytest.raises(EncoderUnavailable, match=words):
        load_encoder(spec)


def test_plain_directory_is_not_an_encoder(tmp_path):
    with pytest.raises(EncoderUnavailable, match="not a langfree encoder directory"):
        load_encoder(str(tmp_path))


@pytest.fixture(scope="module")
def vit_b32_file(tmp_path_factory):
    """Random ViT-B-32 weights in a local file: the only way to exercise real loading offline."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    path = tmp_path_factory.mktemp("vit") / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_local_weights_are_loaded(vit_b32_file):
    model, path = vit_b32_file
    enc = load_encoder(f"open_clip:ViT-B-32@{path}")
    assert enc.embed_dim == 512 and enc.image_size == 224
    assert enc.spec == f"open_clip:ViT-B-32@{path.resolve()}"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model.encode_image(enc.preprocess(x), normalize=True)
        expected_text = model.encode_text(enc.tokenize(["a red circle"]), normalize=True)
    torch.testing.assert_close(enc.encode_image(x), expected)  # the file's weights, not new random ones
    torch.testing.assert_close(enc.encode_text(["a red circle"]), expected_text)


def test_weights_of_another_architecture_are_refused(vit_b32_file):
    _, path = vit_b32_file
    with pytest.raises(EncoderUnavailable, match="could not load"):
        load_encoder(f"open_clip:RN50@{path}")


@pytest.mark.timeout(120)
def test_offline_pretrained_tag_loads_from_the_local_hub_cache(vit_b32_file, tmp_path, monkeypatch):
    """A tag whose weights are already in the Hugging Face cache loads offline (with the tag's
    QuickGELU setting), through open_clip's own resolution."""
    import shutil

    import huggingface_hub.constants as hf

    model, path = vit_b32_file
    snapshot = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    shutil.copy(path, snapshot / "open_clip_model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    enc = load_encoder("open_clip:ViT-B-32/openai")
    assert enc.spec == "open_clip:ViT-B-32/openai"
    assert type(enc.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    for name, value in model.state_dict().items():  # the cached file's weights, not random ones
        assert torch.equal(enc.model.state_dict()[name], value), name
