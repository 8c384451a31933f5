"""Custom Diffusion data and loss: augmentation, the empty-mask guard, prior-preservation math."""

import json

import pytest
import torch

from langfree.families.custom_diffusion.concepts import Concept, read_concepts_list
from langfree.families.custom_diffusion.data import (
    FAR_PREFIXES,
    NEAR_PREFIXES,
    ConceptImages,
    collate,
    placed_mask,
    rescale,
    training_batch,
)
from langfree.families.custom_diffusion.loss import custom_diffusion_loss, masked_mse


@pytest.fixture()
def concept(tmp_path):
    from langfree.families.sd.tiny import write_shape_images

    inst = write_shape_images(tmp_path / "inst", n=3, size=24)
    cls = write_shape_images(tmp_path / "cls", n=2, size=24, colour=(40, 40, 220))
    return Concept("photo of a <new1> square", str(inst), "square", str(cls))


def test_prior_preservation_loss_math():
    torch.manual_seed(0)
    pred, target = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2)
    mask = torch.ones(4, 1, 2, 2)
    mask[0, :, 0] = 0
    is_prior = torch.tensor([False, False, True, True])
    loss, stats = custom_diffusion_loss(pred, target, mask, is_prior, prior_loss_weight=0.5)
    err = (pred - target).square()
    # official normalisation: sum over channels and cells / number of masked cells
    inst = torch.stack([(err[i] * mask[i]).sum() / mask[i].sum() for i in range(2)]).mean()
    prior = err[2:].mean()
    assert torch.allclose(stats["loss/instance"], inst)
    assert torch.allclose(stats["loss/prior"], prior)
    assert torch.allclose(loss, inst + 0.5 * prior)
    per_el = masked_mse(pred[:2], target[:2], mask[:2], per_element=True)
    assert torch.allclose(per_el, inst / 4)


def test_empty_mask_never_gives_nan():
    # a 10 px image at 4 px per latent cell: the official one-cell shrink leaves nothing
    for top in range(0, 23):
        m = placed_mask(top, top, 10, 32, 8)
        assert m.sum() > 0
    m = placed_mask(0, 0, 2, 16, 2)  # smaller than one cell
    assert m.sum() == 1
    zero = torch.zeros(1, 1, 2, 2)
    assert torch.isfinite(masked_mse(torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), zero))


def test_rescale_zoom_out_and_in():
    img = torch.ones(3, 45, 45)
    out, mask = rescale(img, 16, 32, 8)          # zoom out onto a zero canvas
    assert out.shape == (3, 32, 32) and out.abs().sum() > 0 and (out == 0).any()
    assert 0 < mask.sum() < 64
    out, mask = rescale(img, 40, 32, 8)          # zoom in: a crop, all cells masked
    assert out.shape == (3, 32, 32) and mask.sum() == 64


def test_batches_with_prior_and_prompt_prefixes(concept):
    data = ConceptImages((concept,), resolution=16, latent_size=4, with_prior=True, hflip=True)
    seen = set()
    for step in range(20):
        b = training_batch(collate([data[2 * step], data[2 * step + 1]]))
        assert b["image"].shape == (4, 3, 16, 16) and b["mask"].shape == (4, 1, 4, 4)
        assert b["is_prior"].tolist() == [False, False, True, True]
        assert (b["mask"].sum([1, 2, 3]) > 0).all() and (b["mask"][2:] == 1).all()
        assert b["prompt"][2:] == ["square", "square"]
        for p in b["prompt"][:2]:
            assert p.endswith("photo of a <new1> square")
            seen.add(p[: -len("photo of a <new1> square")])
    assert seen & set(FAR_PREFIXES) and seen & set(NEAR_PREFIXES)


def test_items_are_a_pure_function_of_the_key(concept):
    a = ConceptImages((concept,), 16, 4, with_prior=True, hflip=True, seed=3)
    b = ConceptImages((concept,), 16, 4, with_prior=True, hflip=True, seed=3)
    for key in (0, 5, 17):
        x, y = a[key], b[key]
        assert x["prompt"] == y["prompt"] and torch.equal(x["image"], y["image"])
        assert torch.equal(x["mask"], y["mask"]) and torch.equal(x["class_image"], y["class_image"])
    assert not all(torch.equal(a[k]["image"], a[k + 3]["image"]) for k in range(3))  # epochs differ


def test_noaug_keeps_prompt_and_full_mask(concept):
    data = ConceptImages((concept,), resolution=16, latent_size=4, aug=False)
    b = training_batch(collate([data[k] for k in range(3)]))
    assert b["prompt"] == ["photo of a <new1> square"] * 3 and (b["mask"] == 1).all()


def test_concepts_list_json(tmp_path, concept):
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps([vars(concept), {**vars(concept), "instance_prompt": "a <new2>"}]))
    assert [c.instance_prompt for c in read_concepts_list(path)][1] == "a <new2>"
    path.write_text(json.dumps([{"class_prompt": "x"}]))
    with pytest.raises(ValueError, match="needs instance_prompt and instance_data_dir"):
        read_concepts_list(path)
