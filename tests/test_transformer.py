from __future__ import annotations

import pytest
import torch

from unclip.nn.transformer import Attention, Transformer, attention_mask


def test_attention_mask_combines_causal_and_padding():
    km = torch.tensor([[True, True, False]])
    m = attention_mask(km, True, 3, 3, torch.device("cpu"))
    assert m.shape == (1, 1, 3, 3)
    expected = torch.tensor([[True, False, False], [True, True, False], [True, True, False]])
    assert torch.equal(m[0, 0], expected)
    assert attention_mask(None, False, 2, 5, torch.device("cpu")) is None
    with pytest.raises(ValueError):
        attention_mask(None, True, 2, 3, torch.device("cpu"))


def test_causal_outputs_ignore_future_tokens():
    torch.manual_seed(0)
    t = Transformer(16, 2, 2)
    x = torch.randn(2, 5, 16)
    y = t(x, causal=True)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(2, 2, 16)
    y2 = t(x2, causal=True)
    torch.testing.assert_close(y[:, :3], y2[:, :3])
    assert not torch.allclose(y[:, 3:], y2[:, 3:])


def test_key_padding_mask_ignores_padding():
    torch.manual_seed(0)
    t = Transformer(16, 2, 4)
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    y = t(x, key_mask=mask)
    x2 = x.clone()
    x2[:, 4:] = 100.0
    y2 = t(x2, key_mask=mask)
    torch.testing.assert_close(y[:, :4], y2[:, :4])


def test_cross_attention_shapes_and_bf16():
    attn = Attention(16, 2, context_dim=8)
    q, ctx = torch.randn(3, 1, 16), torch.randn(3, 7, 8)
    assert attn(q, context=ctx).shape == (3, 1, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attn(q, context=ctx, key_mask=torch.ones(3, 7, dtype=torch.bool)).shape == (3, 1, 16)
    with pytest.raises(TypeError):
        attn(q, context=ctx, key_mask=torch.ones(3, 7))
