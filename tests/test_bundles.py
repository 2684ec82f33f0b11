"""The models shipped inside the package (`unclip/bundles/<name>`): present, small, loadable, working."""

from __future__ import annotations

import pytest
import torch

from clip_helpers import one_thread
from unclip.cli.generate import at_size
from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.model_dir import BUNDLE_DIR, list_bundles

SHIPPED = ["shapes", "emoji"]
MAX_BUNDLE_BYTES = 40 * 1024 * 1024  # issue #10


@pytest.fixture(scope="module")
def shapes():
    with one_thread():
        yield UnCLIPPipeline.from_pretrained("shapes")


@pytest.mark.parametrize("name", SHIPPED)
def test_bundle_is_shipped_and_small(name):
    assert name in list_bundles()
    files = [p for p in (BUNDLE_DIR / name).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BUNDLE_BYTES
    assert all(p.suffix in {".json", ".safetensors"} for p in files), files  # no pickles, no strays


def test_shapes_bundle_has_every_stage(shapes):
    assert shapes.prior is not None and shapes.prior_ar is not None
    assert shapes.decoder.config.image_size == 32
    assert [u.config.scale for u in shapes.upsamplers] == [4]
    weights = [p for m in (shapes.decoder, shapes.prior, shapes.upsamplers[0]) for p in m.parameters()]
    assert all(torch.isfinite(p).all() for p in weights)


def test_shapes_bundle_colours_follow_the_prompt(shapes):
    """The shipped model paints a solid red prompt redder than a solid blue one (a check that can fail:
    an untrained or miswired model has no reason to)."""
    small = at_size(shapes, 32)  # decoder only: the colour is settled at 32 px
    out = small(
        ["a large solid red square", "a large solid blue square"], num_images_per_prompt=2, seed=0,
        prior_steps=16, decoder_steps=16, output_type="pt",
    )  # fmt: skip
    img = out.images.float()  # (4, 3, 32, 32) in [0, 1]
    red_minus_blue = (img[:, 0] - img[:, 2]).flatten(1).mean(1)
    assert red_minus_blue[:2].min() > red_minus_blue[2:].max()


@pytest.fixture(scope="module")
def emoji():
    with one_thread():
        yield UnCLIPPipeline.from_pretrained("emoji")


def test_emoji_bundle_has_every_stage(emoji):
    assert emoji.prior is not None and emoji.prior_ar is not None
    assert emoji.decoder.config.image_size == 32
    assert [u.config.scale for u in emoji.upsamplers] == [2]  # to the corpus's 64 px
    weights = [p for m in (emoji.decoder, emoji.prior, emoji.upsamplers[0]) for p in m.parameters()]
    assert all(torch.isfinite(p).all() for p in weights)


def test_emoji_bundle_colours_follow_the_prompt(emoji):
    """The shipped emoji model paints "red heart" redder than "blue heart" (the emoji names)."""
    small = at_size(emoji, 32)
    out = small(
        ["red heart", "blue heart"], num_images_per_prompt=2, seed=0,
        prior_steps=16, decoder_steps=16, output_type="pt",
    )  # fmt: skip
    img = out.images.float()
    red_minus_blue = (img[:, 0] - img[:, 2]).flatten(1).mean(1)
    assert red_minus_blue[:2].min() > red_minus_blue[2:].max()
