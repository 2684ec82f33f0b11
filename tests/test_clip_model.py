from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from clip_helpers import CAPTIONS, tiny_clip, tiny_config
from unclip.checkpoint import load_component
from unclip.clip import ClipEncoder, ClipModel, TextEncoding, load_clip, load_encoder
from unclip.errors import UserError


def test_interface_shapes_and_normalisation():
    m = tiny_clip()
    assert isinstance(m, ClipEncoder)
    enc = m.encode_text(CAPTIONS[:3])
    assert isinstance(enc, TextEncoding)
    assert enc.text_emb.shape == (3, m.embed_dim)
    assert enc.text_tokens.shape == (3, m.max_text_len, m.token_width)
    assert enc.text_mask.dtype == torch.bool and enc.text_mask.shape == (3, m.max_text_len)
    torch.testing.assert_close(enc.text_emb.norm(dim=-1), torch.ones(3))
    # Padding positions are zero, so downstream stages see no garbage there.
    assert (enc.text_tokens[~enc.text_mask] == 0).all()
    imgs = torch.rand(2, 3, 23, 17) * 2 - 1
    z = m.encode_image(imgs)
    assert z.shape == (2, m.embed_dim) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    # PIL input and already-preprocessed input agree with the tensor path's preprocessing.
    pil = Image.new("RGB", (40, 30), (200, 10, 10))
    torch.testing.assert_close(m.encode_image([pil]), m.encode_image(m.preprocess([pil]), preprocessed=True))
    assert enc[1:].text_emb.shape == (2, m.embed_dim)
    assert len(enc.repeat_interleave(2)) == 6


def test_empty_prompt_and_truncation(caplog):
    m = tiny_clip()
    with pytest.raises(UserError, match="empty prompt"):
        m.encode_text(["a red circle", "   "])
    with pytest.raises(UserError):
        m.encode_text([])
    long = "a red circle " * 40
    with caplog.at_level(logging.WARNING):
        enc = m.encode_text([long])
    assert "truncated" in caplog.text
    assert enc.text_mask.sum() == m.max_text_len
    ids, _ = m.tokenize([long])
    assert ids[0, -1].item() == m.tokenizer.tokenizer.token_to_id("<eot>")


def test_encode_text_is_batch_independent():
    m = tiny_clip()
    both = m.encode_text(["a red circle on the left", "a big blue square on the right"])
    one = m.encode_text(["a red circle on the left"])
    torch.testing.assert_close(both.text_emb[:1], one.text_emb, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path):
    m = tiny_clip()
    m.save(tmp_path / "clip")
    assert (tmp_path / "clip" / "tokenizer.json").is_file()
    m2 = load_clip(tmp_path / "clip")
    assert torch.equal(m.encode_text(CAPTIONS).text_emb, m2.encode_text(CAPTIONS).text_emb)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(m.encode_image(x), m2.encode_image(x))
    # A model directory holding clip/ opens too, and through the generic loader.
    assert isinstance(load_encoder(tmp_path), ClipModel)
    # load_component alone gives the network; the tokenizer then comes from the directory.
    bare, _, _ = load_component(tmp_path / "clip")
    with pytest.raises(UserError, match="load_clip"):
        bare.encode_text(["a red circle"])
    with pytest.raises(UserError, match="not found"):
        load_clip(tmp_path / "nope")


@pytest.mark.parametrize(
    "vision",
    [{"pool": "attn"}, {"stem": "conv", "stem_channels": 8}, {"arch": "resnet", "width": 8, "heads": 2}],
)
def test_vision_variants_and_bf16(vision):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg = cfg.replace(vision={**cfg.vision.to_dict(), **vision})
    m = ClipModel(cfg)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m.encode_image(x)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, m.encode_image(x), atol=0.05, rtol=0)


def test_bad_configs():
    from unclip.clip import ClipConfig
    from unclip.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        ClipConfig.from_dict({"vision": {"patchsize": 4}})
    with pytest.raises(ConfigError, match="multiple"):
        ClipConfig.from_dict({"vision": {"image_size": 30, "patch_size": 4}})
    with pytest.raises(ConfigError, match="divisible by 8"):
        ClipConfig.from_dict({"vision": {"arch": "resnet", "image_size": 20}})
    with pytest.raises(ConfigError, match="3 values"):
        ClipConfig.from_dict({"image_mean": [0.5, 0.5]})


def test_padding_columns_are_cut_without_changing_results():
    m = tiny_clip()
    ids, mask = m.tokenize(["a red circle", "a big blue square on the left"])
    pooled, tokens = m.text_features(ids, mask)
    full_pooled, full_tokens = m.text(ids, mask)
    torch.testing.assert_close(pooled, full_pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens, full_tokens, atol=1e-5, rtol=0)
    assert tokens.shape[1] == m.max_text_len


def test_resnet_tower_sees_position_and_round_trips(tmp_path):
    """The ResNet tower's attention pooling keeps spatial information (learned positions), and
    the model saves and loads like the ViT one."""
    from unclip.clip import ClipConfig

    torch.manual_seed(0)
    cfg = ClipConfig.from_dict(
        {**tiny_config().to_dict(), "vision": {"image_size": 16, "arch": "resnet", "width": 8, "heads": 2}}
    )
    m = ClipModel(cfg, tiny_clip().tokenizer)
    assert not hasattr(m.visual, "cls_token")
    a = -torch.ones(1, 3, 16, 16)
    b = a.clone()
    a[..., 2:6, 2:6] = 1  # a white square at the top left
    b[..., 10:14, 10:14] = 1  # ... at the bottom right
    za, zb = m.encode_image(torch.cat([a, b]))
    assert (za - zb).abs().max() > 1e-3
    m.save(tmp_path / "clip")
    m2 = load_clip(tmp_path / "clip")
    assert torch.equal(m.encode_image(a), m2.encode_image(a))
