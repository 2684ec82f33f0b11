"""Karlo's UNets and text projection against diffusers: tiny random networks, fp32, same outputs.

Each diffusers module gets random values in every parameter (diffusers zero-initialises several
output layers, which would hide mistakes), is saved with ``save_pretrained``, read back from its
``config.json`` and safetensors file, converted with ``from_diffusers`` + ``load_mapped``, and run
on the same inputs as ours.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from unclip.convert.keys import load_mapped, rename_keys
from unclip.errors import UserError
from unclip.models.karlo.text_proj import TEXT_PROJ_KEYS, KarloTextProj, KarloTextProjConfig
from unclip.models.karlo.unet import UNET_KEYS, KarloUNet, KarloUNetConfig

diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

try:
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
except ImportError:  # diffusers before the unCLIP pipelines were deprecated
    from diffusers.pipelines.unclip.text_proj import UnCLIPTextProjModel

# Relative tolerance: max |ours - diffusers| / max |diffusers|. Both run the same fp32 maths in a
# different order (fused vs separate projections, bool vs -10000 additive masks, SiLU of the
# embedding once vs per block); observed errors are ~1e-6, the bound leaves 100x headroom.
RTOL = 1e-4

DECODER = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 6,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "resnet_time_scale_shift": "scale_shift",
    "class_embed_type": "identity",
}
# Three levels and two blocks per level: exercises the skip-width and block-index arithmetic.
DECODER_DEEP = {
    **DECODER,
    "sample_size": 16,
    "block_out_channels": (32, 64, 96),
    "layers_per_block": 2,
    "down_block_types": (
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "attention_head_dim": 8,
    "norm_eps": 1e-6,
    "freq_shift": 1,
    "flip_sin_to_cos": False,
}
SUPER_RES = {
    "sample_size": 64,
    "in_channels": 6,
    "out_channels": 3,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("ResnetDownsampleBlock2D",) * 2,
    "up_block_types": ("ResnetUpsampleBlock2D",) * 2,
    "resnet_time_scale_shift": "scale_shift",
    "add_attention": False,
}
TEXT_PROJ = {"clip_embeddings_dim": 32, "time_embed_dim": 128, "cross_attention_dim": 32}

# Karlo's real configs as diffusers' Karlo conversion script writes them: most fields are left at
# diffusers' defaults (notably resnet_time_scale_shift="default" for the super-resolution nets).
KARLO_DECODER = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 64,
    "layers_per_block": 3,
    "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
    "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "block_out_channels": [320, 640, 960, 1280],
    "in_channels": 3,
    "out_channels": 6,
    "cross_attention_dim": 1536,
    "class_embed_type": "identity",
    "attention_head_dim": 64,
    "resnet_time_scale_shift": "scale_shift",
}
KARLO_SUPER_RES = {
    "_class_name": "UNet2DModel",
    "sample_size": 256,
    "layers_per_block": 3,
    "down_block_types": ["ResnetDownsampleBlock2D"] * 4,
    "up_block_types": ["ResnetUpsampleBlock2D"] * 4,
    "block_out_channels": [320, 640, 960, 1280],
    "in_channels": 6,
    "out_channels": 3,
    "add_attention": False,
}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter, at scales that keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # the learned null image embedding
                p.copy_(noise)
    return module


def saved(module, tmp_path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``save_pretrained`` then read back the config dict and the state dict, as a converter does."""
    module.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    return config, safetensors_torch.load_file(tmp_path / "diffusion_pytorch_model.safetensors")


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def convert_unet(ref, tmp_path) -> KarloUNet:
    config, state = saved(ref, tmp_path)
    return load_mapped(KarloUNet(KarloUNetConfig.from_diffusers(config)), state, UNET_KEYS, "unet").eval()


def decoder_inputs(size: int, seed: int = 1, batch: int = 3, length: int = 7, float_t: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.rand(batch, generator=g) * 999 if float_t else torch.randint(0, 1000, (batch,), generator=g)
    emb = torch.randn(batch, 128, generator=g)
    ctx = torch.randn(batch, length, 32, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 4:] = False  # padded caption tokens
    mask[1, 2:] = False
    return x, t, emb, ctx, mask


def run_decoder_ref(ref, x, t, emb, ctx, mask):
    return ref(x, t, encoder_hidden_states=ctx, class_labels=emb, attention_mask=mask).sample


@pytest.mark.parametrize(
    "config, float_t",
    [(DECODER, False), (DECODER_DEEP, True), ({**DECODER, "resnet_time_scale_shift": "default"}, False)],
    ids=["tiny", "deep", "additive-emb"],
)
def test_decoder_matches_diffusers(tmp_path, config, float_t):
    ref = randomize(diffusers.UNet2DConditionModel(**config)).eval()
    ours = convert_unet(ref, tmp_path)
    x, t, emb, ctx, mask = decoder_inputs(config["sample_size"], float_t=float_t)
    with torch.no_grad():
        expected = run_decoder_ref(ref, x, t, emb, ctx, mask)
        got = ours(x, t, emb, ctx, mask)
        unmasked = ours(x, t, emb, ctx)
    assert relative_error(got, expected) < RTOL
    assert relative_error(unmasked, run_decoder_ref(ref, x, t, emb, ctx, None)) < RTOL
    # Non-trivial: the masked-out tokens did matter when attended to.
    assert (unmasked[:2] - got[:2]).abs().max() > 1e-3


def test_masked_context_tokens_have_no_influence(tmp_path):
    ref = randomize(diffusers.UNet2DConditionModel(**DECODER)).eval()
    ours = convert_unet(ref, tmp_path)
    x, t, emb, ctx, mask = decoder_inputs(32)
    scrambled = torch.where(mask[..., None], ctx, 100 * torch.randn_like(ctx))
    with torch.no_grad():
        for run in (lambda c: ours(x, t, emb, c, mask), lambda c: run_decoder_ref(ref, x, t, emb, c, mask)):
            assert torch.allclose(run(ctx), run(scrambled), rtol=0, atol=1e-5)


def test_decoder_channels_last_and_scalar_timestep(tmp_path):
    ours = convert_unet(randomize(diffusers.UNet2DConditionModel(**DECODER)).eval(), tmp_path)
    x, _, emb, ctx, mask = decoder_inputs(32)
    with torch.no_grad():
        expected = ours(x, torch.full((3,), 250), emb, ctx, mask)
        ours.to(memory_format=torch.channels_last)
        got = ours(x.to(memory_format=torch.channels_last), torch.tensor(250), emb, ctx, mask)
    assert relative_error(got, expected) < RTOL


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"resnet_time_scale_shift": "default"},  # Karlo's real super-resolution networks
        {"add_attention": True, "attention_head_dim": 8},  # scale_shift: attention without a norm
        {"add_attention": True, "attention_head_dim": None, "resnet_time_scale_shift": "default"},
        {"add_attention": True, "attn_norm_num_groups": 16, "time_embedding_dim": 96},
    ],
    ids=["karlo-dummy", "additive-emb", "mid-attn", "mid-attn-norm", "mid-attn-groups"],
)
def test_super_res_matches_diffusers(tmp_path, changes):
    ref = randomize(diffusers.UNet2DModel(**{**SUPER_RES, **changes})).eval()
    ours = convert_unet(ref, tmp_path)
    assert not ours.config.extra_emb and not ours.config.has_cross_attention
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 6, 64, 64, generator=g), torch.tensor([3, 871])
    with torch.no_grad():
        assert relative_error(ours(x, t), ref(x, t).sample) < RTOL


def test_text_proj_matches_diffusers(tmp_path):
    ref = randomize(UnCLIPTextProjModel(**TEXT_PROJ)).eval()
    config, state = saved(ref, tmp_path)
    ours = load_mapped(
        KarloTextProj(KarloTextProjConfig.from_diffusers(config)), state, TEXT_PROJ_KEYS, "proj"
    )
    g = torch.Generator().manual_seed(3)
    image_emb, text_emb = torch.randn(2, 32, generator=g), torch.randn(4, 32, generator=g)
    text_tokens = torch.randn(4, 9, 32, generator=g)
    with torch.no_grad():
        # diffusers puts the learned null image embedding first when guiding; we take it explicitly.
        ref_ctx, ref_add = ref(
            image_embeddings=image_emb,
            prompt_embeds=text_emb,
            text_encoder_hidden_states=text_tokens,
            do_classifier_free_guidance=True,
        )
        images = torch.cat([ours.null_image_emb.expand(2, -1), image_emb])
        ctx, add = ours(images, text_emb, text_tokens)
    assert ctx.shape == (4, 4 + 9, 32) and add.shape == (4, 128)
    assert relative_error(ctx, ref_ctx) < RTOL
    assert relative_error(add, ref_add) < RTOL
    mask = torch.tensor([[True] * 5 + [False] * 4])
    assert ours.context_mask(mask).tolist() == [[True] * 9 + [False] * 4]


def test_conversion_failures_name_the_key(tmp_path):
    ref = randomize(diffusers.UNet2DConditionModel(**DECODER))
    config, state = saved(ref, tmp_path)
    net = KarloUNet(KarloUNetConfig.from_diffusers(config))
    missing = dict(state)
    del missing["up_blocks.0.attentions.1.add_k_proj.weight"]
    with pytest.raises(UserError, match=r"missing: up\.0\.attn\.1\.context_k\.weight"):
        load_mapped(net, missing, UNET_KEYS, "decoder")
    reshaped = {**state, "mid_block.resnets.1.time_emb_proj.weight": torch.zeros(3, 128)}
    with pytest.raises(UserError, match=r"shape mismatch.*mid\.res\.1\.emb_proj\.weight"):
        load_mapped(net, reshaped, UNET_KEYS, "decoder")
    foreign = {**state, "add_embedding.linear_1.weight": torch.zeros(1)}
    with pytest.raises(UserError, match=r"add_embedding\.linear_1\.weight"):
        load_mapped(net, foreign, UNET_KEYS, "decoder")


@pytest.mark.parametrize(
    "field, value",
    [
        ("down_block_types", ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]),
        ("mid_block_type", "UNetMidBlock2D"),
        ("class_embed_type", "timestep"),
        ("act_fn", "gelu"),
        ("only_cross_attention", True),
        ("cross_attention_norm", "group_norm"),
        ("resnet_time_scale_shift", "spatial"),
        ("attention_head_dim", [4, 8]),
        ("mystery_option", 1),
    ],
)
def test_from_diffusers_rejects_unsupported_fields(field, value):
    config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.42.1", **DECODER, field: value}
    with pytest.raises(UserError, match=field):
        KarloUNetConfig.from_diffusers(config)


def test_from_diffusers_uses_diffusers_defaults_for_missing_fields():
    assert KarloUNetConfig.from_diffusers(KARLO_DECODER) == KarloUNetConfig()
    assert KarloUNetConfig.from_diffusers(KARLO_SUPER_RES) == KarloUNetConfig.karlo_super_res()
    with pytest.raises(UserError, match="cross_attention_dim"):
        KarloTextProjConfig.from_diffusers({"time_embed_dim": 1280})
    full = KarloTextProjConfig.from_diffusers({"time_embed_dim": 1280, "cross_attention_dim": 1536})
    assert full == KarloTextProjConfig()


def test_config_rejects_unsupported_variants():
    with pytest.raises(ValueError, match="down_block_types"):
        KarloUNetConfig(down_block_types=("DownBlock2D",) * 4)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        KarloUNetConfig(cross_attention_dim=None)
    with pytest.raises(ValueError, match="attention_head_dim"):
        KarloUNetConfig(attention_head_dim=48)


def _meta_shapes_match(ref: torch.nn.Module, ours: torch.nn.Module, table, what: str) -> tuple[int, int]:
    renamed = rename_keys(ref.state_dict(), table, what)
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in renamed.items()} == expected
    counts = sum(p.numel() for p in ref.parameters()), sum(p.numel() for p in ours.parameters())
    assert counts[0] == counts[1]
    return counts


@pytest.mark.slow
def test_full_size_karlo_networks_match_diffusers_shapes():
    """Karlo's real sizes, built on the meta device (no memory): same keys, shapes and counts."""
    kwargs = {k: v for k, v in KARLO_DECODER.items() if not k.startswith("_")}
    sr_kwargs = {k: v for k, v in KARLO_SUPER_RES.items() if not k.startswith("_")}
    with torch.device("meta"):
        nets = [
            ("decoder", diffusers.UNet2DConditionModel(**kwargs), KarloUNet(KarloUNetConfig()), UNET_KEYS),
            (
                "super_res",
                diffusers.UNet2DModel(**sr_kwargs),
                KarloUNet(KarloUNetConfig.karlo_super_res()),
                UNET_KEYS,
            ),
            (
                "text_proj",
                UnCLIPTextProjModel(clip_embeddings_dim=768, time_embed_dim=1280, cross_attention_dim=1536),
                KarloTextProj(KarloTextProjConfig()),
                TEXT_PROJ_KEYS,
            ),
        ]
    for name, ref, ours, table in nets:
        renamed = rename_keys(ref.state_dict(), table, name)
        assert {k: tuple(v.shape) for k, v in renamed.items()} == {
            k: tuple(v.shape) for k, v in ours.state_dict().items()
        }
        n_ref, n_ours = (sum(p.numel() for p in m.parameters()) for m in (ref, ours))
        assert n_ref == n_ours
        print(f"{name}: diffusers {n_ref:,} parameters, ours {n_ours:,}")
