from __future__ import annotations

import pytest
import torch
from PIL import Image

from unclip.clip import ClipEncoder, load_encoder
from unclip.errors import UserError

transformers = pytest.importorskip("transformers")

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "photo", "of"]


def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<unk>": 1, "<sot>": 3, "<eot>": 4, **{w: i + 5 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<sot> $A <eot>", special_tokens=[("<sot>", 3), ("<eot>", 4)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<sot>", eos_token="<eot>"
    )


def tiny_hf_clip():
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=12,
            eos_token_id=4,
            bos_token_id=3,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        ),
        projection_dim=24,
    )
    return transformers.CLIPModel(cfg).eval()


def test_hf_adapter_matches_library(tmp_path):
    from unclip.clip.adapters import HFClipAdapter

    model, tok = tiny_hf_clip(), hf_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clip = load_encoder(tmp_path)
    assert isinstance(clip, HFClipAdapter) and isinstance(clip, ClipEncoder)
    assert (clip.embed_dim, clip.image_size, clip.token_width, clip.max_text_len) == (24, 16, 32, 12)

    texts = ["a red circle on the left", "a photo of a blue square"]
    ids, mask = clip.tokenize(texts)
    assert ids.shape == (2, 12)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels)
    enc = clip.encode_text(texts)
    torch.testing.assert_close(enc.text_emb, ref.text_embeds, atol=1e-6, rtol=0)
    hidden = ref.text_model_output.last_hidden_state
    torch.testing.assert_close(enc.text_tokens[mask], hidden[mask], atol=0, rtol=0)
    assert (enc.text_tokens[~mask] == 0).all()
    torch.testing.assert_close(
        clip.encode_image(pixels, preprocessed=True), ref.image_embeds, atol=1e-6, rtol=0
    )
    # PIL and [-1, 1] tensors go through the checkpoint's mean/std preprocessing.
    assert clip.encode_image([Image.new("RGB", (20, 30))]).shape == (1, 24)
    with pytest.raises(UserError):
        clip.encode_text([""])


def test_hf_adapter_without_tokenizer_and_bad_dir(tmp_path):
    from unclip.clip.adapters import HFClipAdapter

    clip = HFClipAdapter(tiny_hf_clip())
    with pytest.raises(UserError, match="no tokenizer"):
        clip.encode_text(["a"])
    ids = torch.tensor([[3, 5, 6, 4, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert clip.encode_tokens(ids, ids.ne(0)).text_emb.shape == (1, 24)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError):
        load_encoder(tmp_path)


def test_open_clip_adapter_matches_library():
    try:
        import open_clip
    except Exception:  # not installed, or torchvision's compiled ops fail to load
        pytest.skip("open_clip not importable")
    from unclip.clip.adapters import OpenClipAdapter

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4, "head_width": 16},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    model = open_clip.CLIP(**cfg).eval()
    tokenizer = open_clip.SimpleTokenizer(context_length=12)
    clip = OpenClipAdapter(model, tokenizer)
    texts = ["a red circle", "a photo of a blue square on the left"]
    ids, _ = clip.tokenize(texts)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref_t = model.encode_text(ids, normalize=True)
        ref_i = model.encode_image(pixels, normalize=True)
    enc = clip.encode_text(texts)
    torch.testing.assert_close(enc.text_emb, ref_t, atol=1e-6, rtol=0)
    torch.testing.assert_close(clip.encode_image(pixels, preprocessed=True), ref_i, atol=1e-6, rtol=0)
    assert enc.text_tokens.shape == (2, 12, 32)
