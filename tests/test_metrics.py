"""Distribution and alignment metrics: FID/KID behaviour, extractor naming, no downloads,
Inception from a local file, CLIP score / R-precision, determinism per seed."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch

from langfree.data.archive import ImageArchive
from langfree.data.shapes import write_shapes
from langfree.metrics import (
    ExtractorUnavailable,
    compute_metrics,
    frechet_distance,
    inception_extractor,
    kernel_distance,
    parse_metric,
)
from test_metrics_helpers import PixelEncoder, tiny_extractor, write_condition

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> ImageArchive:
    path = tmp_path_factory.mktemp("ref") / "shapes.zip"
    write_shapes(path, 160, 32, seed=3)
    return ImageArchive(path)


def replay(ref: ImageArchive, shift: float = 0.0):
    """A 'generator' that returns reference image ``seed % N`` (plus a brightness shift)."""

    def generate(conditions: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        x = ref.images([s % len(ref) for s in seeds]).float() / 127.5 - 1
        return (x + shift).clamp(-1, 1)

    return generate


def noise_generator(conditions: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    return torch.stack([torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) * 2 - 1
                        for s in seeds])


def test_parse_metric_names_encode_the_protocol():
    assert parse_metric("fid10k_full").num == 10000 and parse_metric("fid10k_full").kind == "fid"
    assert parse_metric("fid500_full").num == 500
    assert parse_metric("kid2k_full").kind == "kid"
    assert parse_metric("is10k").num == 10000
    assert parse_metric("clip_score").num == 1000
    assert parse_metric("r_precision200").num == 200
    assert parse_metric("fid10k_full", num=64).num == 64
    for bad in ("fid10k", "fidk_full", "psnr", "fid1_full"):
        with pytest.raises(ValueError):
            parse_metric(bad)


def test_fid_kid_on_features():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same, shifted = frechet_distance(a, b), frechet_distance(a, b + 1.0)
    assert same < 1.0 and shifted > same + 6.0  # ||mean shift||^2 = 8, plus sampling noise
    kid_same, _ = kernel_distance(a, b, seed=1, subsets=10, max_subset_size=100)
    kid_shift, _ = kernel_distance(a, b + 1.0, seed=1, subsets=10, max_subset_size=100)
    assert kid_shift > 10 * abs(kid_same) + 0.1
    # random subsets come from the seed: same seed, same number; another seed, another draw
    again = kernel_distance(a, b + 1.0, seed=1, subsets=10, max_subset_size=100)
    other = kernel_distance(a, b + 1.0, seed=2, subsets=10, max_subset_size=100)
    assert again == (kid_shift, again[1]) and other[0] != kid_shift


def test_fid_of_reference_against_itself_is_zero_and_shift_is_positive(ref):
    n = len(ref)
    names = [f"fid{n}_full", f"kid{n}_full"]
    same = compute_metrics(names, replay(ref), PixelEncoder(), ref, extractor=tiny_extractor())
    shifted = compute_metrics(names, replay(ref, 0.3), PixelEncoder(), ref, extractor=tiny_extractor())
    fid = f"fid{n}_full"
    assert same[fid]["value"] == pytest.approx(0.0, abs=1e-6)
    assert shifted[fid]["value"] > 0.05
    assert shifted[f"kid{n}_full"]["value"] > same[f"kid{n}_full"]["value"] + 1e-3
    for result in (*same.values(), *shifted.values()):
        assert result["extractor"] == "test:grid-colour" and result["inception"] is False
        assert result["num_gen"] == n and result["num_real"] == n
        assert result["conditions"] == "captions"


def _forbid_network(monkeypatch):
    import torch.hub
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    for mod, name in [(torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                      (tf_inception, "load_state_dict_from_url"), (urllib.request, "urlopen"),
                      (socket.socket, "connect")]:
        monkeypatch.setattr(mod, name, refuse)


def test_without_inception_weights_uses_encoder_and_never_downloads(ref, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _forbid_network(monkeypatch)
    results = compute_metrics(["fid40_full", "kid40_full", "is40"], replay(ref), PixelEncoder(), ref)
    for name in ("fid40_full", "kid40_full"):
        assert results[name]["extractor"] == "clip:test:pixel"
        assert results[name]["inception"] is False
        assert "not Inception" in results[name]["note"]
        assert results[name]["value"] is not None
    assert results["is40"]["value"] is None and results["is40"]["available"] is False
    assert "--inception" in results["is40"]["reason"]


def _random_inception_file(tmp_path, monkeypatch) -> str:
    """torch-fidelity's Inception-v3 with random weights, saved as a state dict (.pth)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as m:  # build it without the library fetching its weights
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def test_inception_from_local_file(tmp_path, monkeypatch):
    path = _random_inception_file(tmp_path, monkeypatch)
    _forbid_network(monkeypatch)
    small = ImageArchive(write_shapes(tmp_path / "small.zip", 4, 32, seed=1))  # Inception: ~10 img/s
    results = compute_metrics(["fid4_full", "is4"], replay(small), PixelEncoder(), small.path,
                              inception=path, batch=4)
    assert results["fid4_full"]["inception"] is True
    assert results["fid4_full"]["extractor"] == "inception-v3-2015-12-05"
    assert results["fid4_full"]["value"] == pytest.approx(0.0, abs=1e-3)  # same 4 images
    assert results["is4"]["inception"] is True
    assert results["is4"]["value"] is not None and results["is4"]["value"] >= 1.0 - 1e-6  # IS >= 1


def test_bad_inception_file_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ExtractorUnavailable, match="Inception"):
        inception_extractor(bad)
    with pytest.raises(ExtractorUnavailable, match="does not exist"):
        inception_extractor(tmp_path / "missing.pth")


def test_clip_score_and_r_precision_separate_oracle_from_noise(ref):
    encoder = PixelEncoder()
    background = replay(ref)

    def oracle(conditions, seeds):
        return write_condition(background(conditions, seeds), conditions.embeddings)

    names = ["clip_score100", "r_precision100"]
    good = compute_metrics(names, oracle, encoder, ref)
    bad = compute_metrics(names, noise_generator, encoder, ref)
    assert good["clip_score100"]["value"] > 95
    assert bad["clip_score100"]["value"] < 40
    assert good["r_precision100"]["value"] > 0.95
    assert bad["r_precision100"]["value"] < 0.2
    assert good["r_precision100"]["candidates"] == min(100, len({c for i in range(100)
                                                                for c in ref.captions(i)[:1]}))
    assert good["clip_score100"]["encoder"] == "test:pixel"


def test_generators_receive_prompt_text_and_embeddings(ref):
    seen = []

    def recording(conditions, seeds):
        seen.append(conditions)
        return noise_generator(conditions, seeds)

    compute_metrics(["clip_score8"], recording, PixelEncoder(), ref, batch=4)
    rows = [p for c in seen for p in c.prompts]
    assert rows == [ref.captions(i)[0] for i in range(8)]
    assert all(c.embeddings.shape == (4, PixelEncoder().embed_dim) for c in seen)


def test_samples_are_deterministic_per_seed(ref):
    seen: list[int] = []

    def recording(conditions, seeds):
        seen.extend(seeds)
        return noise_generator(conditions, seeds)

    kw = {"extractor": tiny_extractor(), "batch": 7}
    a = compute_metrics(["fid20_full", "r_precision20"], recording, PixelEncoder(), ref, seed=5, **kw)
    assert seen == list(range(5, 25))  # sample i uses seed 5 + i, generated once for both metrics
    b = compute_metrics(["fid20_full", "r_precision20"], recording, PixelEncoder(), ref, seed=5, **kw)
    c = compute_metrics(["fid20_full"], recording, PixelEncoder(), ref, seed=6, **kw)
    assert a["fid20_full"]["value"] == b["fid20_full"]["value"]
    assert a["r_precision20"]["value"] == b["r_precision20"]["value"]
    assert c["fid20_full"]["value"] != a["fid20_full"]["value"]


def test_uncaptioned_reference_conditions_on_image_embeddings(tmp_path):
    import numpy as np

    from langfree.data.archive import ArchiveWriter

    path = tmp_path / "nocap.zip"
    rng = np.random.default_rng(0)
    with ArchiveWriter(path, 32) as w:
        for _ in range(12):
            w.add(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    results = compute_metrics(["fid12_full", "clip_score12"], noise_generator, PixelEncoder(), path,
                              extractor=tiny_extractor())
    assert results["fid12_full"]["conditions"] == "image_embeddings"
    assert results["clip_score12"]["value"] is None and "captions" in results["clip_score12"]["reason"]


def test_unknown_metric_name_is_a_clear_error(ref):
    with pytest.raises(ValueError, match="unknown metric 'fidelity'"):
        compute_metrics(["fidelity"], noise_generator, PixelEncoder(), ref)
