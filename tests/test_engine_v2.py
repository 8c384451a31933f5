"""Engine v2 contract in process (issue 8): snapshots v2, loop hooks, data from needs, Conditions.

Everything runs on the tests' tiny families (tiny_family.py) and tiny archives; CPU, one thread.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tiny_family
from langfree.checkpoint import SnapshotError, load_snapshot, save_snapshot
from langfree.families.base import LRSchedule, Phase, Reference
from langfree.families.registry import _FAMILIES
from langfree.training.loop import TrainOptions, train
from test_lafite_family_helpers import ToyEncoder


@pytest.fixture(autouse=True)
def _setup(monkeypatch, tiny_families):
    monkeypatch.setitem(_FAMILIES, "tiny_v2", "test_engine_v2:TINY_V2_SPEC")
    RefFamily.log = {"load_references": [], "load_assets": [], "export": []}
    monkeypatch.setattr(RefFamily, "digest", "d1")


def _options(tmp_path, **kw):
    base = {"outdir": str(tmp_path / "runs"), "kimg": 0.032, "batch": 8, "tick_kimg": 0.032,
            "snap": 1, "seed": 0, "deterministic": True}
    return TrainOptions(**{**base, **kw})


def _tiny(seed=0, cls=tiny_family.TinyDenoiser, **cfg):
    torch.manual_seed(seed)
    return cls(cls.Config(**cfg))


def _stats(run_dir):
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


EMB = F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(5)), dim=1)


def _conditions(n=5):
    from langfree.sampling.conditions import Conditions

    return Conditions(prompts=[f"p{i}" for i in range(n)], embeddings=EMB[:n])


# ================================================================== snapshots v2


class RefFamily(tiny_family.TinyDenoiser):
    """Tiny + a frozen component recorded by reference, an asset, an export, and an inference
    snapshot that holds only the EMA copy."""

    name = "tiny_v2"
    digest = "d1"
    log: dict = {}

    def __init__(self, config, encoder=None):
        super().__init__(config, encoder)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)
        self.tokens = b'{"vocab": ["a", "b"]}'

    def modules(self):
        return {**super().modules(), "frozen": self.frozen}

    def snapshot_modules(self):
        return ("net_ema",)

    def references(self):
        return {"frozen": Reference("vae:/models/frozen", type(self).digest)}

    def load_references(self, specs):
        type(self).log["load_references"].append(dict(specs))

    def assets(self):
        return {"tokenizer.json": self.tokens}

    def load_assets(self, assets):
        type(self).log["load_assets"].append(dict(assets))
        self.tokens = assets["tokenizer.json"]

    def export(self, dirpath):
        type(self).log["export"].append(dirpath.name)
        (dirpath / "model_index.json").write_text('{"native": true}')


TINY_V2_SPEC = copy.copy(tiny_family.TINY_SPEC)
object.__setattr__(TINY_V2_SPEC, "name", "tiny_v2")
object.__setattr__(TINY_V2_SPEC, "family", "test_engine_v2:RefFamily")


def _train_a_bit(family, tmp_path, **kw):
    """A few steps so EMA and net differ from their initialisation."""
    return train(family, tiny_family.TinyDataset(), _options(tmp_path, **kw), {})


def test_snapshot_round_trip_gives_identical_samples(tmp_path):
    family = _tiny()
    _train_a_bit(family, tmp_path)
    path = save_snapshot(tmp_path / "snap", family, kimg=0.032)
    loaded = load_snapshot(path, encoder=None)
    seeds = [0, 1, 2, 3, 4]
    a = family.sample(_conditions(), seeds)
    b = loaded.sample(_conditions(), seeds)
    assert torch.equal(a, b)
    opts = tiny_family.TinySampleOptions(noise_scale=0.5)
    assert torch.equal(family.sample(_conditions(), seeds, opts), loaded.sample(_conditions(), seeds, opts))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["sample_options"] == {"noise_scale": 1.0}


def _tensor_files(path):
    return sorted(p.name for p in path.glob("*.safetensors"))


def test_snapshot_holds_only_the_declared_modules(tmp_path):
    family = _tiny(cls=RefFamily)
    path = save_snapshot(tmp_path / "snap", family, kimg=1.0)
    manifest = json.loads((path / "manifest.json").read_text())
    # snapshot_modules() == ("net_ema",): neither the trained net nor the frozen reference
    assert _tensor_files(path) == ["net_ema.safetensors"], _tensor_files(path)
    assert manifest["modules"] == ["net_ema"]


def test_snapshot_modules_override_saves_the_given_modules(tmp_path):
    family = _tiny(cls=RefFamily)
    path = save_snapshot(tmp_path / "snap", family, kimg=1.0, modules=("net", "net_ema"))
    assert _tensor_files(path) == ["net.safetensors", "net_ema.safetensors"], _tensor_files(path)
    assert json.loads((path / "manifest.json").read_text())["modules"] == ["net", "net_ema"]
    # loading reads the declared modules only, and still gives the same samples
    loaded = load_snapshot(path, encoder=None)
    assert torch.equal(loaded.sample(_conditions(2), [0, 1]), family.sample(_conditions(2), [0, 1]))


def test_references_are_recorded_not_copied_and_checked_on_load(tmp_path):
    family = _tiny(cls=RefFamily)
    path = save_snapshot(tmp_path / "snap", family, kimg=1.0)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["references"] == {"frozen": {"spec": "vae:/models/frozen", "digest": "d1"}}
    assert not (path / "frozen.safetensors").exists()
    loaded = load_snapshot(path, encoder=None)
    assert RefFamily.log["load_references"] == [{"frozen": "vae:/models/frozen"}]
    assert torch.equal(loaded.sample(_conditions(1), [3]), family.sample(_conditions(1), [3]))
    RefFamily.digest = "d2"  # the component changed since the snapshot was written
    with pytest.raises(SnapshotError, match="frozen.*d1.*d2"):
        load_snapshot(path, encoder=None)


def test_assets_and_export_round_trip(tmp_path):
    family = _tiny(cls=RefFamily)
    family.tokens = b'{"vocab": ["x"]}'
    path = save_snapshot(tmp_path / "snap", family, kimg=1.0)
    assert (path / "assets" / "tokenizer.json").read_bytes() == b'{"vocab": ["x"]}'
    assert json.loads((path / "manifest.json").read_text())["assets"] == ["tokenizer.json"]
    assert RefFamily.log["export"] and (path / "export" / "model_index.json").is_file()
    loaded = load_snapshot(path, encoder=None)
    assert RefFamily.log["load_assets"] == [{"tokenizer.json": b'{"vocab": ["x"]}'}]
    assert loaded.tokens == b'{"vocab": ["x"]}'


def test_a_family_without_export_writes_no_export_dir(tmp_path):
    path = save_snapshot(tmp_path / "snap", _tiny(), kimg=1.0)
    assert not (path / "export").exists() and not (path / "assets").exists()


def test_resumable_state_excludes_references(tmp_path):
    from langfree.training.state import list_states

    family = _tiny(cls=RefFamily)
    before = copy.deepcopy(family.frozen.state_dict())
    run = _train_a_bit(family, tmp_path)
    (state,) = list_states(run)
    files = _tensor_files(state)
    assert "net.safetensors" in files and "net_ema.safetensors" in files
    assert "frozen.safetensors" not in files, files
    assert all(torch.equal(before[k], v) for k, v in family.frozen.state_dict().items())


def test_version_1_snapshot_with_extra_modules_still_loads(tmp_path):
    from langfree.checkpoint import save_tensors

    family = _tiny()
    _train_a_bit(family, tmp_path)
    path = save_snapshot(tmp_path / "snap", family, kimg=2.0)
    # rewrite it as version 1 did: every module of the family (here an extra 'D'), no
    # references / assets / sample_options keys
    save_tensors(path / "D.safetensors", nn.Linear(2, 1).state_dict())
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("references", "assets", "sample_options"):
        manifest.pop(key)
    manifest.update(format_version=1, modules=["D", "net", "net_ema"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_snapshot(path, encoder=None)
    assert torch.equal(loaded.sample(_conditions(2), [0, 1]), family.sample(_conditions(2), [0, 1]))


def test_version_1_lafite_snapshot_with_d_still_loads(tmp_path):
    """A v1 LAFITE snapshot held G, G_ema and D; v2 LAFITE declares G_ema only."""
    from langfree.checkpoint import save_tensors
    from langfree.families.lafite.family import LafiteFamily
    from test_lafite_family_helpers import tiny_config

    torch.manual_seed(0)
    family = LafiteFamily(tiny_config())
    assert family.snapshot_modules() == ("G_ema",)
    path = save_snapshot(tmp_path / "snap", family, kimg=1.0)
    for name in ("G", "D"):
        save_tensors(path / f"{name}.safetensors", getattr(family, name).state_dict())
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("references", "assets", "sample_options"):
        manifest.pop(key)
    manifest.update(format_version=1, modules=["D", "G", "G_ema"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_snapshot(path, encoder=None)
    emb = F.normalize(torch.randn(2, family.config.c_dim, generator=torch.Generator().manual_seed(1)), dim=1)
    from langfree.sampling.conditions import Conditions

    cond = Conditions(prompts=["a", "b"], embeddings=emb)
    assert torch.equal(loaded.sample(cond, [0, 1]), family.sample(cond, [0, 1]))


def test_snapshot_missing_a_declared_module_is_a_clear_error(tmp_path):
    path = save_snapshot(tmp_path / "snap", _tiny(), kimg=1.0)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["modules"] = ["net"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="net_ema"):
        load_snapshot(path, encoder=None)


# ================================================================== loop hooks


def test_lr_scale_warmup_cosine_rampdown_values():
    from langfree.training.options import lr_scale

    sched = {"lr_warmup_kimg": 0.1, "lr_schedule": "cosine", "lr_rampdown": 0.25,
             "lr_min_scale": 0.0}
    total = 1000

    def cos(t):
        return 0.5 * (1 + math.cos(math.pi * t))

    assert lr_scale(sched, 0, total) == 0.0
    assert lr_scale(sched, 50, total) == pytest.approx(0.5)                 # half-way up the ramp
    assert lr_scale(sched, 100, total) == pytest.approx(1.0)                # warm-up done
    assert lr_scale(sched, 550, total) == pytest.approx(cos(0.5))          # cosine mid-run
    assert lr_scale(sched, 875, total) == pytest.approx(cos(775 / 900) * cos(0.5))  # + ramp-down
    assert lr_scale(sched, 1000, total) == pytest.approx(0.0)
    constant = {"lr_warmup_kimg": 0.0, "lr_schedule": "constant", "lr_rampdown": 0.0}
    assert lr_scale(constant, 0, total) == lr_scale(constant, 999, total) == 1.0
    floor = {**sched, "lr_rampdown": 0.0, "lr_min_scale": 0.1}
    assert lr_scale(floor, 1000, total) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr schedule"):
        LRSchedule(kind="linear")
    with pytest.raises(ValueError, match="rampdown"):
        LRSchedule(rampdown=1.5)


class Recording(tiny_family.TinyDenoiser):
    """Records what the loop hands ``loss`` and ``after_backward``."""

    schedule = LRSchedule(warmup_kimg=0.016, kind="cosine")
    clip = None
    sgd = False

    def __init__(self, config, encoder=None):
        super().__init__(config, encoder)
        self.seen = []          # (progress, lr) per loss call
        self.after = []         # (phase, step, grad norm) per after_backward call

    def optimizers(self):
        if self._optimizers is None and self.sgd:
            self._optimizers = {"main": torch.optim.SGD(self.net.parameters(), lr=self.config.lr)}
        return super().optimizers()

    def lr_schedule(self):
        return self.schedule

    def phases(self):
        return [Phase("main", ("net",), "main", clip_grad_norm=self.clip)]

    def loss(self, phase, nets, batch, progress):
        self.seen.append((progress, self.optimizers()["main"].param_groups[0]["lr"]))
        return super().loss(phase, nets, batch, progress)

    def after_backward(self, phase, nets):
        grads = [p.grad for p in nets["net"].parameters()]
        assert all(g is not None for g in grads), "after_backward runs after backward"
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        self.after.append((phase.name, len(self.seen), float(norm)))


def test_optimiser_lr_follows_the_schedule_and_loss_gets_progress(tmp_path):
    from langfree.training.options import lr_scale

    family = _tiny(cls=Recording, lr=0.01)
    run = train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.064,
                                                            tick_kimg=0.016), {})
    total = 64
    sched = {"lr_warmup_kimg": 0.016, "lr_schedule": "cosine", "lr_rampdown": 0.0,
             "lr_min_scale": 0.0}
    nimgs = [p.nimg for p, _ in family.seen]
    assert nimgs == list(range(0, total, 8))
    assert [p.step for p, _ in family.seen] == list(range(8))
    for progress, lr in family.seen:
        assert progress.total_nimg == total
        assert lr == pytest.approx(0.01 * lr_scale(sched, progress.nimg, total))
    lrs = [lr for _, lr in family.seen]
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(0.01) and lrs[-1] < lrs[3]
    fractions = [p.fraction for p, _ in family.seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    assert fractions[-1] == pytest.approx(56 / 64) and fractions[-1] > 0.85
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["lr_schedule"] == "cosine" and config["lr_warmup_kimg"] == 0.016
    ticks = [s["lr_scale"] for s in _stats(run)] if "lr_scale" in _stats(run)[0] else None
    assert ticks is None or ticks[-1] == pytest.approx(0.0)


def test_options_override_the_family_schedule(tmp_path):
    family = _tiny(cls=Recording, lr=0.01)
    train(family, tiny_family.TinyDataset(),
          _options(tmp_path, kimg=0.032, lr_schedule="constant", lr_warmup_kimg=0.0), {})
    assert [lr for _, lr in family.seen] == [0.01] * 4


def test_clip_grad_norm_bounds_the_update_and_logs_the_norm(tmp_path):
    family = _tiny(cls=Recording, lr=1.0)
    family.schedule, family.clip, family.sgd = LRSchedule(), 1e-3, True
    before = [p.detach().clone() for p in family.net.parameters()]
    run = train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.008,
                                                            tick_kimg=0.008), {})
    after = list(family.net.parameters())
    delta = torch.sqrt(sum((a - b).square().sum() for a, b in zip(after, before)))
    (_, _, raw_norm), = family.after
    assert raw_norm > 1e-2                                    # clipping had something to do
    assert float(delta) == pytest.approx(1e-3, rel=1e-3)     # SGD lr 1: |update| = clipped norm
    (tick,) = _stats(run)
    key = [k for k in tick if k.endswith("main/grad_norm")]
    assert key, sorted(tick)
    assert tick[key[0]] == pytest.approx(raw_norm, rel=1e-4)  # the pre-clip norm is logged


def test_no_clipping_without_clip_grad_norm(tmp_path):
    family = _tiny(cls=Recording, lr=1.0)
    family.schedule, family.sgd = LRSchedule(), True
    before = [p.detach().clone() for p in family.net.parameters()]
    run = train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.008,
                                                            tick_kimg=0.008), {})
    delta = torch.sqrt(sum((a - b).square().sum() for a, b in zip(family.net.parameters(), before)))
    (_, _, raw_norm), = family.after
    assert float(delta) == pytest.approx(raw_norm, rel=1e-4)
    assert not [k for k in _stats(run)[0] if k.endswith("grad_norm")]


class EmbeddingRow(tiny_family.TinyDenoiser):
    """An embedding table conditions the net; after_backward keeps only row 0 trainable (the
    custom-diffusion ``<new1>`` token pattern)."""

    def __init__(self, config, encoder=None):
        super().__init__(config, encoder)
        self.emb = nn.Embedding(4, config.cond_dim)
        self.calls = []

    def modules(self):
        return {**super().modules(), "emb": self.emb}

    def optimizers(self):
        if self._optimizers is None:
            params = list(self.net.parameters()) + list(self.emb.parameters())
            self._optimizers = {"main": torch.optim.Adam(params, lr=self.config.lr)}
        return self._optimizers

    def phases(self):
        return [Phase("main", ("net", "emb"), "main")]

    def loss(self, phase, nets, batch, progress):
        batch = {**batch, "image_emb": batch["image_emb"] + nets["emb"](batch["index"] % 4)}
        self.calls.append(("loss", progress.step))
        return super().loss(phase, nets, batch, progress)

    def after_backward(self, phase, nets):
        grad = nets["emb"].weight.grad
        self.calls.append(("after_backward", phase.name, bool(grad[1:].abs().sum() > 0)))
        grad[1:] = 0


def test_after_backward_runs_once_per_step_and_masks_embedding_rows(tmp_path):
    family = _tiny(cls=EmbeddingRow)
    rows_before = family.emb.weight.detach().clone()
    net_before = family.net[0].weight.detach().clone()
    train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.032), {})
    kinds = [c[0] for c in family.calls]
    assert kinds == ["loss", "after_backward"] * 4
    assert all(c[1] == "main" and c[2] for c in family.calls if c[0] == "after_backward")
    rows_after = family.emb.weight.detach()
    assert not torch.equal(rows_after[0], rows_before[0])          # row 0 trains
    assert torch.equal(rows_after[1:], rows_before[1:])            # the others never move
    assert not torch.equal(family.net[0].weight, net_before)


class GanHooks(tiny_family.TinyGAN):
    def __init__(self, config, encoder=None):
        super().__init__(config, encoder)
        self.hook_calls = []

    def after_backward(self, phase, nets):
        trained = [n for n, m in nets.items()
                   if any(p.grad is not None and p.requires_grad for p in m.parameters())]
        self.hook_calls.append((phase.name, tuple(sorted(trained))))


def test_after_backward_once_per_phase_run_with_that_phase_grads(tmp_path):
    family = _tiny(cls=GanHooks)
    train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.064), {})  # 8 steps
    names = [c[0] for c in family.hook_calls]
    assert names.count("G") == 8 and names.count("D") == 8 and names.count("Dreg") == 2
    assert names[:3] == ["G", "D", "Dreg"] and names[3:5] == ["G", "D"]
    assert {c for c in family.hook_calls} == {("G", ("G",)), ("D", ("D",)), ("Dreg", ("D",))}
    assert family.calls == {"G": 8, "D": 8, "Dreg": 2}


@pytest.mark.parametrize("kind", ["decay", "half_life"])
def test_ema_by_decay_or_half_life(tmp_path, kind):
    family = _tiny()
    ema_before = copy.deepcopy(family.net_ema.state_dict())
    # batch 8: a half-life of 8 images is beta 0.5, the same as decay 0.5
    extra = {"ema_decay": 0.5} if kind == "decay" else {"ema_kimg": 0.008}
    run = train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.008,
                                                            tick_kimg=0.008, **extra), {})
    net = family.net.state_dict()
    for k, v in family.net_ema.state_dict().items():
        assert torch.allclose(v, 0.5 * net[k] + 0.5 * ema_before[k], atol=1e-6), k
    recorded = json.loads((run / "config.json").read_text())["train"]
    if kind == "decay":
        assert recorded["ema_decay"] == 0.5 and recorded["ema_kimg"] is None
    else:
        assert recorded["ema_kimg"] == 0.008 and recorded["ema_decay"] is None


def test_ema_decay_differs_from_default_and_both_given_is_refused(tmp_path):
    from langfree.training.options import TrainingError

    family = _tiny()
    ema_before = copy.deepcopy(family.net_ema.state_dict())
    train(family, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.008, tick_kimg=0.008,
                                                      ema_decay=0.9), {})
    net = family.net.state_dict()
    for k, v in family.net_ema.state_dict().items():
        assert torch.allclose(v, 0.1 * net[k] + 0.9 * ema_before[k], atol=1e-6), k
    with pytest.raises(TrainingError, match="ema"):
        train(_tiny(), tiny_family.TinyDataset(),
              _options(tmp_path / "b", ema_decay=0.9, ema_kimg=1.0), {})


# ================================================================== data from needs


class CpuToyEncoder(ToyEncoder):
    device = torch.device("cpu")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.image_calls = 0

    def encode_image(self, images):
        self.image_calls += 1
        return super().encode_image(images)


def _write_archive(path, n=6, captions=True, shade=0):
    from langfree.data.archive import ArchiveWriter

    g = np.random.default_rng(shade)
    with ArchiveWriter(path, resolution=8) as w:
        for i in range(n):
            caps = [f"red thing {i}", f"blue thing {i}"] if captions and i % 3 else []
            w.add(g.integers(0, 256, (8, 8, 3), dtype=np.uint8), captions=caps)
    return path


@dataclass
class NeedsFamily:
    needs: frozenset
    name: str = "needy"
    produce: object = None

    def producers(self):
        if self.produce is None:
            return {}
        return {self.produce.kind: self.produce}


class CountingProducer:
    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        x = images.float() / 255
        return {"latents_mean": x.mean(1, keepdim=True), "latents_std": x.std(1, keepdim=True)}


def _producer(counter, fingerprint="fp1", batch_size=4):
    from langfree.data.sidecar import Producer

    return Producer("latents", fingerprint, counter, batch_size=batch_size)


def test_dataset_gives_exactly_the_declared_fields(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset
    from langfree.sampling.conditions import encode_texts

    archive = ImageArchive(_write_archive(tmp_path / "d.zip"))
    encoder = CpuToyEncoder(dim=16)
    full = NeedsFamily(frozenset({"image", "image_emb", "text_emb", "has_caption", "captions"}))
    ds = build_dataset(full, archive, encoder, seed=1)
    for key in range(12):
        item = ds[key]
        assert set(item) == {"index", "image", "image_emb", "text_emb", "has_caption", "caption"}
        i = key % 6
        assert item["index"] == i and item["image"].dtype == torch.uint8
        if archive.captions(i):
            assert item["has_caption"] and item["caption"] in archive.captions(i)
            want = encode_texts(encoder, [item["caption"]])[0]
            assert torch.allclose(item["text_emb"], want, atol=1e-5)  # the same caption
        else:
            assert not item["has_caption"] and item["caption"] == ""
            assert torch.equal(item["text_emb"], torch.zeros(16))
    only_image = build_dataset(NeedsFamily(frozenset({"image"})), archive, None)
    assert set(only_image[0]) == {"index", "image"}


def test_dataset_for_image_emb_only_gives_no_text_fields(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset

    archive = ImageArchive(_write_archive(tmp_path / "d.zip"))
    ds = build_dataset(NeedsFamily(frozenset({"image_emb"})), archive, CpuToyEncoder(dim=16))
    assert set(ds[1]) == {"index", "image_emb"}, sorted(ds[1])


def test_dataset_has_caption_alone_is_true_for_captioned_images(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset

    archive = ImageArchive(_write_archive(tmp_path / "d.zip"))
    ds = build_dataset(NeedsFamily(frozenset({"image", "has_caption"})), archive,
                       CpuToyEncoder(dim=16))
    assert archive.captions(1)
    assert bool(ds[1]["has_caption"]) is True, "image 1 has captions"


def test_dataset_sidecar_fields_from_a_producer(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset

    archive = ImageArchive(_write_archive(tmp_path / "d.zip"))
    counter = CountingProducer()
    ds = build_dataset(NeedsFamily(frozenset({"image", "latents"}), produce=_producer(counter)),
                       archive, None)
    item = ds[7]
    assert set(item) == {"index", "image", "latents_mean", "latents_std"}
    want = archive.images([1]).float() / 255
    assert torch.allclose(item["latents_mean"], want.mean(1, keepdim=True)[0])


def test_integer_sidecar_fields_keep_their_dtype(tmp_path):
    """VQ codes / token ids index embeddings: a sidecar must not turn them into floats."""
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset
    from langfree.data.sidecar import Producer

    archive = ImageArchive(_write_archive(tmp_path / "d.zip"))

    def codes(images):
        return {"image_codes": (images[:, 0, :2, :2].long() % 7).flatten(1)}   # [B, 4] int64

    fam = NeedsFamily(frozenset({"image_codes"}), produce=Producer("image_codes", "vq1", codes))
    item = build_dataset(fam, archive, None)[2]
    want = (archive.images([2])[:, 0, :2, :2].long() % 7).flatten(1)[0]
    assert torch.equal(item["image_codes"].long(), want)
    assert item["image_codes"].dtype == torch.int64, item["image_codes"].dtype


def test_a_declared_need_without_a_source_stops_at_start(tmp_path):
    """text_ids is a declared need (base.NEEDS); nothing makes it, so training must not start
    with batches that silently lack it."""
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import NeedError, build_dataset

    archive = ImageArchive(_write_archive(tmp_path / "d.zip"))
    fam = NeedsFamily(frozenset({"image", "text_ids"}))
    try:
        ds = build_dataset(fam, archive, None)
    except NeedError as exc:
        assert "text_ids" in str(exc)
    else:
        assert "text_ids" in ds[1], f"need text_ids declared, item has {sorted(ds[1])}"


def test_missing_inputs_fail_with_need_error_naming_them(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import NeedError, build_dataset

    captioned = ImageArchive(_write_archive(tmp_path / "c.zip"))
    bare = ImageArchive(_write_archive(tmp_path / "b.zip", captions=False))
    with pytest.raises(NeedError, match=r"image_emb.*--encoder.*langfree encoder train"):
        build_dataset(NeedsFamily(frozenset({"image", "image_emb"})), captioned, None)
    with pytest.raises(NeedError, match=r"captions.*langfree dataset"):
        build_dataset(NeedsFamily(frozenset({"image", "captions"})), bare, None)
    with pytest.raises(NeedError, match="latents"):
        build_dataset(NeedsFamily(frozenset({"image", "latents"})), captioned, None)
    with pytest.raises(NeedError, match="unknown needs"):
        build_dataset(NeedsFamily(frozenset({"image", "pixels"})), captioned, None)

    class Hinted(NeedsFamily):
        def need_hint(self, need):
            return f"pass --vae DIR to make the {need}"

    with pytest.raises(NeedError, match="--vae DIR"):
        build_dataset(Hinted(frozenset({"latents"})), captioned, None)


def test_producer_sidecar_is_computed_once_and_reused(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset
    from langfree.data.sidecar import sidecar_path

    path = _write_archive(tmp_path / "d.zip", n=10)
    counter = CountingProducer()
    fam = NeedsFamily(frozenset({"image", "latents"}), produce=_producer(counter))
    first = build_dataset(fam, ImageArchive(path), None)
    calls = counter.calls
    assert calls == 3                                      # 10 images, batches of 4
    assert sidecar_path(path, "latents", "fp1").is_file()
    second = build_dataset(fam, ImageArchive(path), None)
    assert counter.calls == calls                          # reused, not recomputed
    assert torch.equal(first[3]["latents_mean"], second[3]["latents_mean"])
    # another producer fingerprint: computed again, into its own file
    other = NeedsFamily(frozenset({"image", "latents"}), produce=_producer(counter, "fp2"))
    build_dataset(other, ImageArchive(path), None)
    assert counter.calls == 2 * calls and sidecar_path(path, "latents", "fp2").is_file()
    # the archive changes: the stale sidecar is recomputed
    _write_archive(path, n=10, shade=1)
    third = build_dataset(fam, ImageArchive(path), None)
    assert counter.calls == 3 * calls
    assert not torch.equal(third[3]["latents_mean"], first[3]["latents_mean"])


def test_interrupted_sidecar_build_leaves_no_final_file(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset
    from langfree.data.sidecar import sidecar_path

    path = _write_archive(tmp_path / "d.zip", n=10)
    counter = CountingProducer()

    def flaky(images):
        if counter.calls == 1:
            counter.calls += 1
            raise KeyboardInterrupt
        return counter(images)

    fam = NeedsFamily(frozenset({"image", "latents"}), produce=_producer(flaky))
    with pytest.raises(KeyboardInterrupt):
        build_dataset(fam, ImageArchive(path), None)
    dest = sidecar_path(path, "latents", "fp1")
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(dest.name) and p.is_file()]
    ds = build_dataset(fam, ImageArchive(path), None)   # the rerun completes
    assert dest.is_file() and len(ds) == 10


def test_features_sidecar_reused_across_builds(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset

    path = _write_archive(tmp_path / "d.zip")
    encoder = CpuToyEncoder(dim=16)
    fam = NeedsFamily(frozenset({"image", "image_emb"}))
    build_dataset(fam, ImageArchive(path), encoder)
    calls = encoder.image_calls
    assert calls > 0
    build_dataset(fam, ImageArchive(path), encoder)
    assert encoder.image_calls == calls


# ================================================================== Conditions


def test_conditions_select_and_repeat_each():
    from langfree.sampling.conditions import Conditions

    images = torch.arange(3 * 3 * 2 * 2, dtype=torch.float32).view(3, 3, 2, 2)
    c = Conditions(prompts=["a", "b", "c"], embeddings=EMB[:3], images=images,
                   negative_prompts=["na", "nb", "nc"])
    assert c.labels == ["a", "b", "c"]
    s = c.select([2, 0, 2])
    assert s.prompts == ["c", "a", "c"] and s.negative_prompts == ["nc", "na", "nc"]
    assert torch.equal(s.embeddings, EMB[[2, 0, 2]]) and torch.equal(s.images, images[[2, 0, 2]])
    assert s.labels == ["c", "a", "c"]
    r = c.repeat_each(2)
    assert r.prompts == ["a", "a", "b", "b", "c", "c"] and len(r) == 6
    assert torch.equal(r.embeddings, EMB[[0, 0, 1, 1, 2, 2]])
    with pytest.raises(ValueError, match="embeddings has 2 rows"):
        Conditions(prompts=["a", "b", "c"], embeddings=EMB[:2])


def test_conditions_require_embeddings_and_prompts():
    from langfree.sampling.conditions import Conditions

    no_emb = Conditions(prompts=["a", "b"])
    with pytest.raises(ValueError, match="fam.*--encoder"):
        no_emb.require_embeddings("fam")
    assert no_emb.require_prompts("fam") == ["a", "b"]
    image_row = Conditions(prompts=["a", None], embeddings=EMB[:2])
    assert torch.equal(image_row.require_embeddings("fam"), EMB[:2])
    with pytest.raises(ValueError, match="fam.*--prompt"):
        image_row.require_prompts("fam")
    assert image_row.labels == ["a", "row 1"]


def test_build_conditions_prompts_and_reference_images(tmp_path):
    from PIL import Image

    from langfree.sampling.conditions import build_conditions, encode_texts

    encoder = CpuToyEncoder(dim=16)
    ref = torch.rand(1, 3, 8, 8) * 2 - 1
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "ref.png")
    c = build_conditions(encoder, ["red thing", "blue thing"], [ref, tmp_path / "ref.png"],
                         negative_prompt="blurry")
    assert c.prompts == ["red thing", "blue thing", None, None]
    assert c.labels == ["red thing", "blue thing", "image 0", "image:ref.png"]
    assert c.negative_prompts == ["blurry"] * 4
    assert c.images is None                          # mixed rows: not every row has an image
    assert c.embeddings.shape == (4, 16)
    assert torch.allclose(c.embeddings[:2], encode_texts(encoder, ["red thing", "blue thing"]))
    assert torch.allclose(c.embeddings[2], F.normalize(encoder.encode_image(ref), dim=-1)[0])
    assert torch.allclose(c.embeddings.norm(dim=1), torch.ones(4))
    refs_only = build_conditions(encoder, images=[ref, ref * 0.5])
    assert refs_only.images.shape == (2, 3, 8, 8) and refs_only.prompts == [None, None]
    text_only = build_conditions(None, ["a"])
    assert text_only.embeddings is None and text_only.prompts == ["a"]
    with pytest.raises(ValueError, match="--encoder"):
        build_conditions(None, [], [ref])
    with pytest.raises(ValueError, match="nothing to condition on"):
        build_conditions(encoder)


class RowSeedFamily:
    """Writes its row's embedding value and its seed into the pixels: any mix-up of (row, seed)
    pairs or batch order by generate_grid shows exactly."""

    name = "row_seed"
    SampleOptions = tiny_family.TinySampleOptions

    def __init__(self):
        self.batches = []

    def sample(self, conditions, seeds, options=None):
        options = options or self.SampleOptions()
        self.batches.append(len(seeds))
        emb = conditions.require_embeddings(self.name)[:, 0]
        out = torch.zeros(len(seeds), 3, 2, 2)
        out[:, 0] = emb[:, None, None]
        out[:, 1] = torch.tensor(seeds, dtype=torch.float32)[:, None, None]
        out[:, 2] = options.noise_scale
        return out


def test_generate_grid_pairs_rows_with_seeds_in_any_batching():
    from langfree.sampling.conditions import Conditions
    from langfree.sampling.generate import generate_grid

    family = RowSeedFamily()
    cond = Conditions(prompts=list("abcde"), embeddings=torch.arange(5.0)[:, None].repeat(1, 4))
    seeds = [3, 7, 11]
    for batch in (64, 1, 4):
        grid = generate_grid(family, cond, seeds, tiny_family.TinySampleOptions(0.5), batch=batch)
        assert grid.shape == (5, 3, 3, 2, 2)
        rows = grid[:, :, 0, 0, 0]
        cols = grid[:, :, 1, 0, 0]
        assert torch.equal(rows, torch.arange(5.0)[:, None].expand(5, 3)), batch
        assert torch.equal(cols, torch.tensor([seeds] * 5, dtype=torch.float32)), batch
        assert torch.all(grid[:, :, 2] == 0.5)
    assert family.batches[-4:] == [4, 4, 4, 3]


def test_generate_grid_image_depends_only_on_row_seed_and_options():
    """The tiny MLP itself: batch composition changes only float rounding (BLAS blocking)."""
    from langfree.sampling.generate import generate_grid

    family = _tiny()
    cond = _conditions(5)
    seeds = [3, 7, 11]
    opts = tiny_family.TinySampleOptions(noise_scale=0.5)
    grid = generate_grid(family, cond, seeds, opts)
    assert grid.shape == (5, 3, 3, 8, 8)

    def same(a, b):
        return torch.allclose(a, b, rtol=0, atol=1e-6)

    assert same(grid, generate_grid(family, cond, seeds, opts, batch=1))
    assert same(grid, generate_grid(family, cond, seeds, opts, batch=4))
    one = generate_grid(family, cond.select([3]), [11], opts)
    assert same(one[0, 0], grid[3, 2])
    swapped = generate_grid(family, cond.select([4, 1]), [7, 3], opts)
    assert same(swapped[1, 0], grid[1, 1]) and same(swapped[0, 1], grid[4, 0])
    assert not same(generate_grid(family, cond, seeds), grid)          # options matter
    assert not same(grid[0, 0], grid[0, 1]) and not same(grid[0, 0], grid[1, 0])
    state = torch.get_rng_state()
    generate_grid(family, cond, seeds, opts)
    assert torch.equal(state, torch.get_rng_state())                   # global RNG untouched
