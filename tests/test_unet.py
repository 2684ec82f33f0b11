"""The shared UNet trunk: shapes, zero init, attention context, precision, layouts, checkpointing."""

from __future__ import annotations

import pytest
import torch

from unclip.config import ConfigError
from unclip.models.unet import UNet, UNetConfig
from unclip.nn.attention import SpatialAttention
from unclip.nn.embeddings import LearnedPos2d, timestep_embedding
from unclip.nn.precision import autocast

TINY = UNetConfig(
    model_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(8,),
    image_size=16,
    num_head_channels=8,
    pos_emb="learned",
)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Give every weight (including the zero-initialised ones) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            # Norm gains stay near 1 so activations keep a sane scale.
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)
    return module


def inputs(b: int, size: int, ctx_dim: int | None = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ctx = torch.randn(b, 5, ctx_dim, generator=g) if ctx_dim else None
    mask = torch.ones(b, 5, dtype=torch.bool) if ctx_dim else None
    return x, t, ctx, mask


@pytest.mark.parametrize("size", [8, 16, 24, 40])
def test_forward_shapes_at_several_resolutions(size):
    torch.manual_seed(0)
    net = UNet(TINY, 3, 6, context_dim=12)
    x, t, ctx, mask = inputs(2, size)
    assert net(x, t, None, ctx, mask).shape == (2, 6, size, size)


def test_zero_output_at_init():
    torch.manual_seed(0)
    net = UNet(TINY, 3, 3, context_dim=12)
    x, t, ctx, mask = inputs(3, 16)
    out = net(x, t, torch.randn(3, TINY.emb_dim), ctx, mask)
    assert out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0


def test_input_validation():
    net = UNet(TINY, 3, 3)
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.randn(1, 3, 15, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(1, 4, 16, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="attention_resolutions"):
        UNetConfig.from_dict({**TINY.to_dict(), "attention_resolutions": [5]})
    with pytest.raises(ConfigError, match="unknown key"):
        UNetConfig.from_dict({**TINY.to_dict(), "use_attention": True})


def test_masked_context_tokens_have_no_effect():
    torch.manual_seed(0)
    net = randomize(UNet(TINY, 3, 3, context_dim=12))
    x, t, ctx, mask = inputs(2, 16)
    mask[:, 3:] = False
    ctx2 = ctx.clone()
    ctx2[:, 3:] += 5.0
    a = net(x, t, None, ctx, mask)
    assert torch.equal(a, net(x, t, None, ctx2, mask))
    ctx3 = ctx.clone()
    ctx3[:, :3] += 5.0
    assert not torch.allclose(a, net(x, t, None, ctx3, mask))


def test_bf16_autocast_matches_fp32():
    # bf16 keeps 8 mantissa bits; through a few dozen layers the output stays within 5 % (relative
    # L2) of fp32, which is the tolerance the sampling path relies on.
    torch.manual_seed(0)
    net = randomize(UNet(TINY, 3, 3, context_dim=12), std=0.05)
    x, t, ctx, mask = inputs(4, 16)
    ref = net(x, t, None, ctx, mask)
    with autocast("cpu", "bf16"):
        low = net(x, t, None, ctx, mask)
    assert low.dtype == torch.float32
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = randomize(UNet(TINY, 3, 3, context_dim=12), std=0.05)
    x, t, ctx, mask = inputs(2, 16)
    ref = net(x, t, None, ctx, mask)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), t, None, ctx, mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    net = randomize(UNet(TINY, 3, 3, context_dim=12), std=0.05)
    x, t, ctx, mask = inputs(2, 16)

    def grads():
        net.zero_grad()
        net(x, t, None, ctx, mask).square().mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    ref = grads()
    net.enable_gradient_checkpointing()
    for a, b in zip(ref, grads()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_conv_resample_and_coordinates():
    cfg = TINY.replace(resample="conv", input_coords=True, attention_resolutions=[], pos_emb="none")
    torch.manual_seed(0)
    net = UNet(cfg, 3, 3)
    x, t, _, _ = inputs(2, 24, None)
    assert net(x, t).shape == (2, 3, 24, 24)
    assert not any(isinstance(m, SpatialAttention) for m in net.modules())


def test_attention_pos_embedding_resizes():
    pos = LearnedPos2d(4, 8)
    x = torch.zeros(1, 4, 8, 8)
    torch.testing.assert_close(pos(x), pos.pos.detach())
    assert pos(torch.zeros(2, 4, 12, 6)).shape == (2, 4, 12, 6)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 10, 999]), 33)
    assert e.shape == (3, 33)
    torch.testing.assert_close(e[0, :16], torch.ones(16))  # cos(0)
    torch.testing.assert_close(e[0, 16:32], torch.zeros(16))  # sin(0)
