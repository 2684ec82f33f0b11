"""Every built-in preset parses into its stage's frozen config and a valid TrainConfig."""

from __future__ import annotations

import pytest

from unclip.clip.config import ClipConfig
from unclip.models.decoder import DecoderConfig
from unclip.models.prior_config import ARPriorConfig, DiffusionPriorConfig
from unclip.models.upsampler import UpsamplerConfig
from unclip.presets import get_preset, list_presets
from unclip.train.config import TrainConfig

CONFIGS = {
    "clip": ClipConfig,
    "decoder": DecoderConfig,
    "upsampler": UpsamplerConfig,
    "diffusion_prior": DiffusionPriorConfig,
    "ar_prior": ARPriorConfig,
}


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds_its_configs(name):
    preset = get_preset(name)
    assert preset.get("description"), f"{name} has no description"
    config = CONFIGS[preset["kind"]].from_dict(preset["model"])
    assert config.to_dict()  # round-trips through the strict loader
    TrainConfig.from_dict(preset.get("train", {}))


def test_sharp_upsampler_preset_is_the_bundle_upsampler_with_a_wider_blur_range():
    base, sharp = get_preset("upsampler-32-128")["model"], get_preset("upsampler-32-128-sharp")["model"]
    assert sharp.pop("blur_sigma") == [0.0, 0.5]  # the only difference: same weights fit both
    assert UpsamplerConfig.from_dict(sharp) == UpsamplerConfig.from_dict(base)
    assert UpsamplerConfig.from_dict(base).blur_sigma == (0.4, 0.8)


def test_color_clip_preset_differs_from_the_default_only_by_the_colour_path():
    base, color = get_preset("clip-shapes-resnet")["model"], get_preset("clip-shapes-resnet-color")["model"]
    assert color["vision"].pop("global_color") is True
    assert color == base
