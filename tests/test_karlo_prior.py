"""Karlo's prior network against diffusers' PriorTransformer (converted weights, same outputs)."""

from __future__ import annotations

import pytest
import torch

from unclip.convert.keys import load_mapped, rename_keys
from unclip.errors import UserError
from unclip.models.karlo.prior import PRIOR_KEYS, KarloPriorConfig, KarloPriorNet

diffusers = pytest.importorskip("diffusers")

# The unCLIP pipeline test's dummy prior (diffusers tests/pipelines/unclip): width 2 x 12 = 24.
TINY = {"num_attention_heads": 2, "attention_head_dim": 12, "embedding_dim": 32, "num_layers": 1}
# fp32 on CPU; both sides run the same SDPA on the same additive mask in the same order, so the
# outputs agree to rounding (measured: bitwise equal, outputs of order 1).
ATOL = 1e-5


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random, including the zero-initialised ones (positions, prd, clip stats)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5))
            if name == "clip_std":
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def convert(ref: torch.nn.Module, tmp_path) -> KarloPriorNet:
    """save_pretrained -> the safetensors file -> our network, as the converter does."""
    from safetensors.torch import load_file

    ref.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    config = KarloPriorConfig.from_diffusers(dict(ref.config))
    return load_mapped(KarloPriorNet(config), state, PRIOR_KEYS, "prior").eval()


def inputs(config: KarloPriorConfig, batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L = config.num_embeddings
    lengths = torch.tensor([L, 5, 1][:batch])  # one full caption, two padded ones
    return {
        "x": torch.randn(batch, config.embedding_dim, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "text_emb": torch.randn(batch, config.text_emb_dim, generator=g),
        "text_hidden": torch.randn(batch, L, config.text_width, generator=g),
        "text_mask": torch.arange(L)[None] < lengths[:, None],
    }


def reference(ref: torch.nn.Module, a: dict[str, torch.Tensor]) -> torch.Tensor:
    out = ref(
        hidden_states=a["x"],
        timestep=a["t"],
        proj_embedding=a["text_emb"],
        encoder_hidden_states=a["text_hidden"],
        attention_mask=a["text_mask"],
    ).predicted_image_embedding
    return out.reshape(out.shape[0], -1)  # (B, 1, D) without the prd token


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"num_layers": 2},
        {"norm_in_type": "layer", "embedding_proj_norm_type": "layer"},
        {"added_emb_type": None, "additional_embeddings": 3, "embedding_proj_dim": 20, "clip_embed_dim": 28},
        {"encoder_hid_proj_type": None},
    ],
    ids=["karlo-1-layer", "karlo-2-layers", "layer-norms", "no-prd", "unprojected-tokens"],
)
def test_matches_diffusers(tmp_path, extra):
    ref = randomised(diffusers.PriorTransformer(**{**TINY, **extra})).eval()
    net = convert(ref, tmp_path)
    a = inputs(net.config)
    with torch.no_grad():
        want = reference(ref, a)
        got = net(**a)
    assert got.shape == want.shape == (3, net.config.clip_dim)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # A scalar timestep broadcasts over the batch, as in the reference.
    with torch.no_grad():
        torch.testing.assert_close(net(**{**a, "t": a["t"][0]}), net(**{**a, "t": a["t"][:1].expand(3)}))
    # post_process_latents and its inverse.
    z = torch.randn(3, net.config.clip_dim)
    with torch.no_grad():
        torch.testing.assert_close(net.unnormalise(z), ref.post_process_latents(z), atol=ATOL, rtol=0)
    torch.testing.assert_close(net.normalise(net.unnormalise(z)), z, atol=ATOL, rtol=0)


def test_padding_values_do_not_matter(tmp_path):
    # Masked caption tokens get exactly zero attention weight (-10000 underflows in exp), so the
    # values at padding (zeros in our TextEncoding, CLIP outputs in diffusers') do not matter.
    net = convert(randomised(diffusers.PriorTransformer(**TINY)).eval(), tmp_path)
    a = inputs(net.config)
    b = dict(a, text_hidden=a["text_hidden"] * a["text_mask"][..., None])
    with torch.no_grad():
        assert torch.equal(net(**a), net(**b))


def test_from_diffusers_rejects_unsupported():
    ok = {"_class_name": "PriorTransformer", "_diffusers_version": "0.12.0", "dropout": 0.1, **TINY}
    cfg = KarloPriorConfig.from_diffusers(ok)
    assert cfg.width == 24 and KarloPriorConfig.from_json(cfg.to_json()) == cfg
    bad = [
        ({"norm_in_type": "group"}, "norm_in_type"),
        ({"time_embed_act_fn": "gelu"}, "time_embed_act_fn"),
        ({"time_embed_dim": 7}, "time_embed_dim"),
        ({"additional_embeddings": 5}, "additional_embeddings"),
        ({"new_option": 1}, "new_option"),
        ({"_class_name": "UNet2DModel"}, "PriorTransformer"),
    ]
    for change, field in bad:
        with pytest.raises(UserError, match=field):
            KarloPriorConfig.from_diffusers({**ok, **change})


def test_conversion_failures(tmp_path):
    ref = randomised(diffusers.PriorTransformer(**TINY))
    state = ref.state_dict()
    net = KarloPriorNet(KarloPriorConfig.from_diffusers(dict(ref.config)))
    missing = {k: v for k, v in state.items() if k != "clip_std"}
    with pytest.raises(UserError, match="missing: clip_std"):
        load_mapped(net, missing, PRIOR_KEYS, "prior")
    wrong = dict(state, **{"proj_in.weight": torch.zeros(24, 31)})
    with pytest.raises(UserError, match=r"x_proj.weight \(24, 31\) vs \(24, 32\)"):
        load_mapped(net, wrong, PRIOR_KEYS, "prior")
    unknown = dict(state, **{"transformer_blocks.0.attn2.to_q.weight": torch.zeros(24, 24)})
    with pytest.raises(UserError, match="attn2"):
        load_mapped(net, unknown, PRIOR_KEYS, "prior")
    # A network of a different depth than the checkpoint: unexpected block keys.
    deeper = diffusers.PriorTransformer(**{**TINY, "num_layers": 2}).state_dict()
    with pytest.raises(UserError, match=r"unexpected: blocks\.1"):
        load_mapped(net, deeper, PRIOR_KEYS, "prior")


@pytest.mark.slow
def test_full_size_shapes_on_meta():
    # Karlo's prior (diffusers defaults): every tensor maps to one of ours with the same shape.
    with torch.device("meta"):
        ref = diffusers.PriorTransformer()
        net = KarloPriorNet(KarloPriorConfig.from_diffusers(dict(ref.config)))
    theirs = ref.state_dict()
    mapped = rename_keys(theirs, PRIOR_KEYS, "prior")
    ours = net.state_dict()
    assert set(mapped) == set(ours)
    for k, v in ours.items():
        assert tuple(mapped[k].shape) == tuple(v.shape), k
    n_ref = sum(v.numel() for v in theirs.values())
    n_ours = sum(v.numel() for v in ours.values())
    print(f"Karlo prior: {n_ours:,} parameters incl. clip_mean/clip_std (ours) vs {n_ref:,} (diffusers)")
    assert n_ref == n_ours
